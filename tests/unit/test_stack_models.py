"""``make run``'s choice of models (``latentq_dev/stack_models.py``), against the packaged registry."""

from __future__ import annotations

import pytest

from latentq.models import build_registry
from latentq_dev.stack_models import StackConfigError, serve_default
from tests.conftest import REPO

REGISTRY = build_registry(REPO / "latentq" / "models.toml", (), None)  # default: tiny-sd


def test_a_served_default_is_kept():
    for served in ("", "tiny-sd", "tiny-sdxl, tiny-sd"):
        env = {"LATENTQ_WORKER_MODELS": served}
        assert serve_default(env, REGISTRY) == ("tiny-sd", None)
        assert "LATENTQ_DEFAULT_MODEL" not in env


def test_an_implicit_default_becomes_the_first_served_model_that_draws_and_says_so():
    env = {"LATENTQ_WORKER_MODELS": "lanczos,tiny-sdxl,tiny-sd-inpainting"}
    model, note = serve_default(env, REGISTRY)
    assert model == "tiny-sdxl" and env["LATENTQ_DEFAULT_MODEL"] == "tiny-sdxl"
    assert note is not None and "does not serve tiny-sd:" in note and "use tiny-sdxl" in note


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"LATENTQ_WORKER_MODELS": "tiny-sd,sdxl-turbo"},
         ["unregistered", "sdxl-turbo", "registered: tiny-sd"]),
        ({"LATENTQ_WORKER_MODELS": "tiny-sdxl", "LATENTQ_DEFAULT_MODEL": "tiny-sd"},
         ["LATENTQ_DEFAULT_MODEL=tiny-sd", "tiny-sdxl", "forever"]),
        ({"LATENTQ_WORKER_MODELS": "lanczos,tiny-x4-upscaler"}, ["draws from text", "tiny-sd"]),
    ],
)  # fmt: skip
def test_a_stack_that_could_not_serve_its_requests_is_refused_in_one_line(env, words):
    with pytest.raises(StackConfigError) as refused:
        serve_default(env, REGISTRY)
    message = str(refused.value)
    assert "\n" not in message and all(word in message for word in words), message
