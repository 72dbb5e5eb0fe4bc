"""The model registry: entries from a file and LATENTQ_MODELS, family defaults, size rules."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from latentq.models import PACKAGED_REGISTRY, SDXL_SIZES, ModelSpec, build_registry, size_problem
from latentq.settings import CommonSettings, get_registry


def test_packaged_registry_holds_the_embedded_models_and_a_resampler():
    registry = build_registry(PACKAGED_REGISTRY, (), None)
    assert registry.ids() == [
        "tiny-sd", "tiny-sdxl", "tiny-sd-inpainting", "tiny-x4-upscaler", "lanczos", "tiny-sd3", "tiny-flux",
    ]  # fmt: skip
    assert registry.default.id == "tiny-sd"
    families = [m.family for m in registry.models.values()]
    assert families == ["sd1", "sdxl", "sd1", "upscaler-x4", "resampler", "sd3", "flux"]
    assert [m.embedded_name for m in registry.models.values()] == [
        "tiny-sd", "tiny-sdxl", "tiny-sd-inpainting", "tiny-x4-upscaler", None, "tiny-sd3", "tiny-flux",
    ]  # fmt: skip
    tasks = {m.id: m.tasks for m in registry.models.values()}
    assert tasks["tiny-sd"] == ("text-to-image", "image-to-image", "masking")
    assert tasks["tiny-sd-inpainting"] == ("masking",)
    assert tasks["tiny-x4-upscaler"] == tasks["lanczos"] == ("upscale",)
    assert registry.get("lanczos").limits.max_pixels == 4_194_304


def test_environment_entries_add_and_replace_by_id(monkeypatch):
    monkeypatch.setenv(
        "LATENTQ_MODELS",
        '[{"id": "stable-diffusion-v1-5", "source": "/models/sd15", "family": "sd1"},'
        ' {"id": "tiny-sd", "source": "/elsewhere", "family": "sd1", "limits": {"min_side": 64,'
        ' "min_pixels": 4096}, "defaults": {"width": 64, "height": 64}}]',
    )
    monkeypatch.setenv("LATENTQ_DEFAULT_MODEL", "stable-diffusion-v1-5")
    registry = get_registry(CommonSettings())
    assert registry.ids()[0] == "tiny-sd" and registry.ids()[-1] == "stable-diffusion-v1-5"
    assert registry.get("tiny-sd").source == "/elsewhere"
    assert registry.default.id == "stable-diffusion-v1-5"


def test_family_defaults_and_limits_apply_unless_overridden():
    sd15 = ModelSpec.model_validate({"id": "sd15", "source": "x", "family": "sd1"})
    assert (sd15.limits.min_pixels, sd15.limits.max_pixels) == (262_144, 1_048_576)
    assert (sd15.defaults.width, sd15.defaults.steps, sd15.defaults.cfg_scale) == (512, 30, 7.0)
    sdxl = ModelSpec.model_validate({"id": "sdxl", "source": "x", "family": "sdxl"})
    assert sdxl.limits.sizes == SDXL_SIZES and (sdxl.defaults.width, sdxl.defaults.height) == (1024, 1024)
    turbo = ModelSpec.model_validate({"id": "t", "source": "x", "family": "turbo", "defaults": {"steps": 4}})
    assert (turbo.defaults.steps, turbo.defaults.cfg_scale, turbo.defaults.sampler) == (
        4,
        0.0,
        "K_EULER_ANCESTRAL",
    )


def test_flow_families_have_their_own_limits_defaults_and_samplers():
    sd3 = ModelSpec.model_validate({"id": "sd35", "source": "x", "family": "sd3", "t5": False})
    flux = ModelSpec.model_validate({"id": "flux", "source": "x", "family": "flux"})
    for model in (sd3, flux):
        assert model.tasks == ("text-to-image", "image-to-image", "masking")
        assert (model.limits.multiple, model.limits.min_side, model.limits.max_pixels) == (16, 256, 2_097_152)
        assert (model.defaults.width, model.defaults.steps, model.defaults.sampler) == (1024, 28, "K_EULER")
    assert (sd3.samplers, flux.samplers) == (("K_EULER", "K_HEUN"), ("K_EULER",))
    assert (sd3.defaults.cfg_scale, flux.defaults.cfg_scale) == (7.0, 3.5)
    assert sd3.takes_negative_prompt and not flux.takes_negative_prompt and not sd3.t5
    sd15 = ModelSpec.model_validate({"id": "sd15", "source": "x", "family": "sd1"})
    assert len(sd15.samplers) == 19 and sd15.takes_negative_prompt and sd15.t5


@pytest.mark.parametrize(
    "entry",
    [
        {"id": "x", "source": "x", "family": "sd1", "defaults": {"sampler": "K_NOPE"}},
        {"id": "x", "source": "x", "family": "sd1", "defaults": {"width": 100}},
        {"id": "x", "source": "x", "family": "sdxl", "defaults": {"width": 512}},
        {"id": "x", "source": "x", "family": "sd1", "limits": {"colour": 1}},
        {"id": "x", "source": "", "family": "sd1"},
        {"id": "x", "source": "x", "family": "flux", "defaults": {"sampler": "K_DPMPP_2M_KARRAS"}},
        {"id": "x", "source": "x", "family": "sd3", "defaults": {"width": 1000}},
        {"id": "x", "source": "x", "family": "flux", "t5": False},
    ],
)
def test_bad_entries_are_refused(entry):
    with pytest.raises(ValidationError):
        ModelSpec.model_validate(entry)


def test_unknown_default_model_is_refused():
    with pytest.raises(ValueError, match="default model 'nope' is not registered"):
        build_registry(PACKAGED_REGISTRY, (), "nope")


def test_registry_file_with_unknown_top_level_keys_is_refused(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[[model]]\nid = "x"\n')
    with pytest.raises(ValueError, match="unknown top-level keys"):
        build_registry(path, (), None)


@pytest.mark.parametrize(
    ("family", "size", "problem"),
    [
        ("sd1", (512, 512), None),
        ("sd1", (512, 2048), None),
        ("sd1", (256, 512), "invalid_pixel_count"),
        ("sd1", (1024, 1032), "invalid_pixel_count"),
        ("sd1", (100, 512), "invalid_width"),
        ("sd1", (512, 4096), "invalid_height"),
        ("sdxl", (1216, 832), None),
        ("sdxl", (1024, 960), "invalid_size"),
        ("flux", (1024, 1024), None),
        ("flux", (1440, 1440), None),
        ("flux", (1024, 1000), "invalid_height"),
        ("sd3", (1024, 1024), None),
        ("sd3", (2048, 2048), "invalid_pixel_count"),
    ],
)
def test_size_rules(family, size, problem):
    model = ModelSpec.model_validate({"id": "m", "source": "x", "family": family})
    found = size_problem(model.limits, *size)
    assert (found[0] if found else None) == problem
