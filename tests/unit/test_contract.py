"""The job contract, the error table and request parsing, without services."""

from __future__ import annotations

import pytest

from api.validation import parse_body
from latentq.contract import SAMPLERS, GenerateRequest, JobSpec, JobStatus, status_from_rq
from latentq.errors import ERRORS, REQUEST_FIELDS, LatentqError


def test_defaults():
    request = parse_body(GenerateRequest, b'{"prompt": "a cat"}')
    assert (request.width, request.height, request.steps, request.cfg_scale) == (512, 512, 30, 7.0)
    assert (request.samples, request.seed, request.sampler) == (1, 0, "K_EULER")


@pytest.mark.parametrize("side", [64, 72, 512, 1016, 1024])
def test_every_multiple_of_8_within_limits_is_accepted(side):
    request = parse_body(GenerateRequest, f'{{"prompt": "a", "width": {side}, "height": {side}}}'.encode())
    assert request.width == side


def test_bool_is_not_a_number():
    with pytest.raises(LatentqError) as caught:
        parse_body(GenerateRequest, b'{"prompt": "a", "steps": true}')
    assert caught.value.name == "invalid_steps"


def test_integral_float_cfg_and_int_cfg_are_both_numbers():
    assert parse_body(GenerateRequest, b'{"prompt": "a", "cfg_scale": 5}').cfg_scale == 5.0


def test_every_request_field_has_a_named_error():
    assert set(GenerateRequest.model_fields) == set(REQUEST_FIELDS)
    for field in REQUEST_FIELDS:
        assert ERRORS[f"invalid_{field}"].status == 422


def test_samplers_listed_once():
    assert SAMPLERS == ("K_EULER", "K_EULER_ANCESTRAL", "DDIM", "K_DPMPP_2M")


def test_image_seeds_are_consecutive():
    spec = JobSpec(
        job_id="j", model="m", prompt="a", negative_prompt=None, width=64, height=64, steps=1,
        cfg_scale=7, samples=3, seed=4_294_967_295, sampler="K_EULER",
    )  # fmt: skip
    assert spec.image_seeds() == [4_294_967_295, 4_294_967_296, 4_294_967_297]


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
    assert error.status == 422
    assert error.to_dict() == {"name": "invalid_width", "message": "width: bad", "field": "width"}
