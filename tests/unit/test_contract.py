"""The job contract, the error table and request parsing, without services."""

from __future__ import annotations

import pytest

from api.body_parsing import parse_body
from latentq.contract import (
    SAMPLERS,
    GenerateRequest,
    JobSpec,
    JobStatus,
    UpscaleRequest,
    WeightedPrompt,
    status_from_rq,
)
from latentq.errors import ERRORS, FIELD_ERROR_NAMES, REQUEST_FIELDS, LatentqError, stability_name
from worker.diffusion.schedulers import SCHEDULERS


def test_omitted_fields_are_left_to_the_model():
    request = parse_body(GenerateRequest, b'{"prompt": "a cat"}')
    assert (request.model, request.width, request.height, request.steps, request.cfg_scale) == (None,) * 5
    assert (request.samples, request.seed, request.sampler, request.output_format) == (1, 0, None, "png")


def test_bool_is_not_a_number():
    with pytest.raises(LatentqError) as caught:
        parse_body(GenerateRequest, b'{"prompt": "a", "steps": true}')
    assert caught.value.name == "invalid_steps"


def test_integral_float_cfg_and_int_cfg_are_both_numbers():
    assert parse_body(GenerateRequest, b'{"prompt": "a", "cfg_scale": 5}').cfg_scale == 5.0


def test_every_request_field_has_a_named_error():
    named = set(REQUEST_FIELDS) | set(FIELD_ERROR_NAMES)
    assert set(GenerateRequest.model_fields) | set(UpscaleRequest.model_fields) == named
    for field in REQUEST_FIELDS:
        assert ERRORS[f"invalid_{field}"].status == 400
    for name in FIELD_ERROR_NAMES.values():
        assert ERRORS[name].status == 400


def test_samplers_are_stabilitys_ten_their_karras_variants_unipc_and_lcm():
    stability = {"DDIM", "DDPM", "K_DPMPP_2M", "K_DPMPP_2S_ANCESTRAL", "K_DPM_2", "K_DPM_2_ANCESTRAL",
                 "K_EULER", "K_EULER_ANCESTRAL", "K_HEUN", "K_LMS"}  # fmt: skip
    assert stability <= set(SAMPLERS)
    assert {s for s in SAMPLERS if s.endswith("_KARRAS")} == {
        f"{s}_KARRAS" for s in stability - {"DDIM", "DDPM", "K_EULER_ANCESTRAL"}
    }
    assert set(SAMPLERS) - stability - {f"{s}_KARRAS" for s in stability} == {"UNIPC", "LCM"}
    assert sorted(SAMPLERS) == sorted(SCHEDULERS)


def spec(**changes) -> JobSpec:
    values = {
        "job_id": "j", "model": "m", "prompts": [WeightedPrompt(text="a", weight=1.0)], "width": 64,
        "height": 64, "steps": 1, "cfg_scale": 7, "samples": 1, "seed": 5, "sampler": "K_EULER",
    }  # fmt: skip
    return JobSpec(**{**values, **changes})


def test_image_seeds_are_consecutive_and_wrap_within_the_valid_range():
    assert spec(samples=3, seed=7).image_seeds() == [7, 8, 9]
    # Every reported seed can be sent back: past the largest seed, numbering wraps to 1.
    assert spec(samples=3, seed=4_294_967_294).image_seeds() == [4_294_967_294, 4_294_967_295, 1]


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("invalid_width", "invalid_height_or_width"), ("invalid_size", "invalid_height_or_width"),
     ("invalid_pixel_count", "invalid_pixel_count"), ("invalid_samples", "invalid_samples"),
     ("invalid_text_prompts", "invalid_prompts"), ("invalid_steps", "bad_request"),
     ("unknown_field", "bad_request"), ("invalid_json", "bad_request"), ("unauthorized", "unauthorized"),
     ("not_found", "not_found"), ("generation_failed", "server_error"), ("timeout", "server_error")],
)  # fmt: skip
def test_stability_view_of_the_error_table(ours, theirs):
    assert stability_name(ours) == theirs


@pytest.mark.parametrize(
    ("rq_status", "ours"),
    [("queued", JobStatus.QUEUED), ("started", JobStatus.RUNNING), ("finished", JobStatus.SUCCEEDED),
     ("failed", JobStatus.FAILED), ("stopped", JobStatus.FAILED), ("canceled", JobStatus.CANCELED)],
)  # fmt: skip
def test_rq_statuses_map_to_ours(rq_status, ours):
    assert status_from_rq(rq_status) is ours


def test_terminal_statuses():
    assert {s for s in JobStatus if s.is_terminal} == {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELED,
    }


def test_error_names_are_unique_and_have_statuses():
    assert all(400 <= spec.status < 600 for spec in ERRORS.values())
    with pytest.raises(ValueError, match="unknown error name"):
        LatentqError("no_such_error")


def test_error_carries_details():
    error = LatentqError("invalid_width", "width: bad", field="width")
    assert error.status == 400
    assert error.to_dict() == {"name": "invalid_width", "message": "width: bad", "field": "width"}
