"""Safety modes without services: the registry's choice of mode and checker and its refusals, what
``flag`` and ``filter`` do to a pipeline call's images, one checker call per call in a round, a
failing checker failing its jobs (never passing their images unchecked), the images' records, and
the embedded checkers' deterministic verdicts."""

from __future__ import annotations

import pytest
from PIL import Image

from api.routes.stability import finish_reason
from latentq.contract import JobSpec, StoredImage, WeightedPrompt
from latentq.models import PACKAGED_REGISTRY, ModelSpec, build_registry
from tests.unit.test_batching import FakePipeline, run_round, spec
from worker.runner import step_reporter, store_images
from worker.safety import SafetyGate

ENTRY = {"source": "/x", "family": "sd1"}


def registry(tmp_path, models: list[dict], checkers: str = "", **deployment):
    """The registry of a file holding ``checkers`` (TOML) and the ``models`` entries."""
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "base"\nsource = "/x"\nfamily = "sd1"\n' + checkers)
    return build_registry(path, tuple(ModelSpec.model_validate(m) for m in models), None, **deployment)


CHECKERS = """
[[safety_checkers]]
id = "first"
source = "/checkers/first"
[[safety_checkers]]
id = "second"
source = "embedded:tiny-safety-none"
"""


def test_models_are_unchecked_unless_their_entry_or_the_deployment_says_so(tmp_path):
    packaged = build_registry(PACKAGED_REGISTRY, (), None)
    assert list(packaged.safety_checkers) == ["tiny-safety-all", "tiny-safety-none"]
    assert {packaged.safety_of(model)[0] for model in packaged.models.values()} == {"off"}
    models = [
        {**ENTRY, "id": "own", "safety": "flag", "safety_checker": "second"},
        {**ENTRY, "id": "flagged", "safety": "filter"},
        {**ENTRY, "id": "off", "safety": "off"},
    ]
    plain = registry(tmp_path, models, CHECKERS)
    choices = {model_id: plain.safety_of(model) for model_id, model in plain.models.items()}
    assert choices["base"] == ("off", None) and choices["off"] == ("off", None)
    assert (choices["own"][0], choices["own"][1].id) == ("flag", "second")
    assert (choices["flagged"][0], choices["flagged"][1].id) == ("filter", "first")  # the first registered
    deployment = registry(tmp_path, models, CHECKERS, safety="filter", safety_checker="second")
    mode, checker = deployment.safety_of(deployment.models["base"])
    assert (mode, checker.id, checker.embedded_name) == ("filter", "second", "tiny-safety-none")
    assert deployment.safety_of(deployment.models["off"]) == ("off", None)  # the entry's own off wins


@pytest.mark.parametrize(
    ("models", "checkers", "deployment", "message"),
    [
        ([{**ENTRY, "id": "m", "safety": "flag"}], "", {}, "needs a safety checker"),
        ([], "", {"safety": "filter"}, "model 'base': safety 'filter' needs a safety checker"),
        ([{**ENTRY, "id": "m", "safety": "flag", "safety_checker": "nope"}], CHECKERS, {},
         "safety checker 'nope' is not registered .*first, second"),
        ([], CHECKERS, {"safety": "flag", "safety_checker": "nope"}, "checker 'nope' is not registered"),
        ([], '[[safety_checkers]]\nid = "x"\n', {}, "source"),
        ([], '[[safety_checkers]]\nid = "x"\nsource = "/x"\nthreshold = 1\n', {}, "threshold"),
    ],
)  # fmt: skip
def test_registry_refuses_checks_without_a_registered_checker(
    tmp_path, models, checkers, deployment, message
):
    with pytest.raises(ValueError, match=message):
        registry(tmp_path, models, checkers, **deployment)


def test_a_bad_safety_mode_is_refused():
    with pytest.raises(ValueError, match="'off', 'flag' or 'filter'"):
        ModelSpec.model_validate({**ENTRY, "id": "m", "safety": "blur"})


class FakeChecker:
    """Flags the images ``flagged`` says; records each call's images."""

    def __init__(self, flagged=lambda image: True) -> None:
        self.flagged, self.calls = flagged, []

    def flags(self, images):
        self.calls.append(list(images))
        return [self.flagged(image) for image in images]


def test_flag_keeps_images_and_filter_replaces_the_flagged_ones_by_black():
    red, blue = Image.new("RGB", (16, 8), "red"), Image.new("RGB", (16, 8), "blue")
    checker = FakeChecker(lambda image: image.getpixel((0, 0)) == (255, 0, 0))
    images, flags = SafetyGate("flag", checker).review([red, blue])
    assert images[0] is red and images[1] is blue and flags == [True, False]
    images, flags = SafetyGate("filter", checker).review([red, blue])
    assert flags == [True, False] and images[1] is blue
    assert (images[0].size, images[0].mode, images[0].getextrema()) == ((16, 8), "RGB", ((0, 0),) * 3)


def test_a_round_checks_each_pipeline_calls_images_in_one_checker_call():
    pipeline = FakePipeline()
    pipeline.safety = SafetyGate("flag", FakeChecker(lambda image: image.startswith("b")))
    outcomes = run_round(pipeline, [spec("a"), spec("b", samples=2), spec("c", width=128)], flags=True)
    assert outcomes[0] == (["a:0"], 2, [False]) and outcomes[1] == (["b:0", "b:1"], 2, [True, True])
    assert outcomes[2] == (["c:0"], 1, [False])
    assert sorted(pipeline.safety.checker.calls) == [["a:0", "b:0", "b:1"], ["c:0"]]


def test_a_failing_checker_fails_its_jobs_instead_of_passing_their_images():
    class Broken:
        def flags(self, images):
            raise RuntimeError("checker broke")

    pipeline = FakePipeline()
    pipeline.safety = SafetyGate("filter", Broken())
    outcomes = run_round(pipeline, [spec("a"), spec("b")], flags=True)
    assert all(isinstance(outcomes[index], RuntimeError) for index in (0, 1))


def test_unchecked_models_images_carry_no_flags():
    outcomes = run_round(FakePipeline(), [spec("a")], flags=True)
    assert outcomes[0] == (["a:0"], 1, None)


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data


def job(samples: int = 2) -> JobSpec:
    return JobSpec(job_id="j", model="m", prompts=[WeightedPrompt(text="a", weight=1.0)], width=8,
                   height=8, steps=4, cfg_scale=7.0, samples=samples, seed=5, sampler="K_EULER",
                   preview=True)  # fmt: skip


def test_stored_images_record_their_flags_and_stability_names_the_filtered_ones():
    images = [Image.new("RGB", (8, 8)) for _ in range(2)]
    checked = store_images(MemoryStore(), job(), images, nsfw=[True, False], filtering=True)
    assert [(image.nsfw, image.filtered) for image in checked] == [(True, True), (False, False)]
    assert [finish_reason(image) for image in checked] == ["CONTENT_FILTERED", "SUCCESS"]
    unchecked = store_images(MemoryStore(), job(), images)
    assert [(image.nsfw, image.filtered) for image in unchecked] == [(None, False)] * 2
    assert StoredImage.model_validate({"key": "k", "seed": 1, "width": 8, "height": 8}).nsfw is None


class PreviewPipeline:
    safety = None

    def preview(self, latents) -> bytes:
        return b"jpeg"


def test_a_filtering_model_publishes_no_previews():
    import threading

    from worker.context import WarmState

    warm = WarmState({}, None, None, None)  # type: ignore[arg-type]
    pipeline = PreviewPipeline()
    assert step_reporter(warm, job(), pipeline, threading.Event()).preview is not None
    pipeline.safety = SafetyGate("flag", FakeChecker())
    assert step_reporter(warm, job(), pipeline, threading.Event()).preview is not None
    pipeline.safety = SafetyGate("filter", FakeChecker())
    assert step_reporter(warm, job(), pipeline, threading.Event()).preview is None


def test_embedded_checkers_are_deterministic_and_flag_all_or_nothing(tmp_path):
    from worker.diffusion.safety import SafetyChecker
    from worker.embedded.models import build_tiny_model

    first = build_tiny_model(tmp_path / "a", "tiny-safety-all")
    again = build_tiny_model(tmp_path / "b", "tiny-safety-all")
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    images = [Image.new("RGB", (64, 64)), Image.effect_noise((96, 64), 60).convert("RGB")]
    assert SafetyChecker.load(str(first), "cpu").flags(images) == [True, True]
    none = build_tiny_model(tmp_path / "c", "tiny-safety-none")
    assert SafetyChecker.load(str(none), "cpu").flags(images) == [False, False]
    assert SafetyChecker.load(str(none), "cpu").flags([]) == []


def test_a_job_sampled_alone_is_checked_too():
    from worker.context import SampleAlone

    pipeline = FakePipeline()
    pipeline.safety = SafetyGate("flag", FakeChecker())
    assert tuple(SampleAlone().sample(pipeline, spec("a", samples=2), {}, None)) == (
        ["a:0", "a:1"],
        1,
        [True, True],
    )
