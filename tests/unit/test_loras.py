"""LoRA adapters without a model: the registry tables, the API's check, the batch key, the worker's cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.job_specs import resolve_loras
from latentq.contract import JobSpec, LoraChoice, LoraWeight, WeightedPrompt
from latentq.errors import LatentqError
from latentq.loras import LoraSpec
from latentq.models import PACKAGED_REGISTRY, build_registry
from worker.diffusion.adapters import AdapterFile, LoadedAdapters
from worker.encoding import parameters_text, reproduce_request
from worker.rounds import batch_key


def spec(name: str, loras: list[LoraWeight]) -> JobSpec:
    prompts = [WeightedPrompt(text=name, weight=1.0)]
    return JobSpec(job_id=name, model="m", prompts=prompts, width=64, height=64, steps=20, cfg_scale=7.0,
                   samples=1, seed=1, sampler="K_EULER", loras=loras)  # fmt: skip


A, B = LoraWeight(id="a", weight=1.0), LoraWeight(id="b", weight=0.5)


@pytest.mark.parametrize(
    ("first", "second", "batched"),
    [([], [], True), ([A], [A], True), ([A, B], [A, B], True), ([], [A], False), ([A], [B], False),
     ([A], [LoraWeight(id="a", weight=0.9)], False), ([A, B], [B, A], False), ([A], [A, B], False)],
)  # fmt: skip
def test_the_adapter_set_and_weights_are_part_of_the_batch_key(first, second, batched):
    assert (batch_key(spec("x", first)) == batch_key(spec("y", second))) is batched


def test_the_packaged_registry_registers_the_embedded_adapters():
    registry = build_registry(PACKAGED_REGISTRY, (), None)
    assert registry.loras["tiny-sd-lora"].embedded_name == "tiny-sd-lora"
    assert registry.loras["tiny-sd-lora"].fits("tiny-sd", "sd1")
    assert not registry.loras["tiny-sd-lora"].fits("tiny-sd-inpainting", "sd1")  # restricted by models
    assert not registry.loras["tiny-sdxl-lora"].fits("tiny-sd", "sd1")


def test_a_registry_file_with_only_models_has_no_adapters(tmp_path: Path):
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "m"\nsource = "x"\nfamily = "sd1"\n')
    assert build_registry(path, (), None).loras == {}
    with pytest.raises(ValueError, match="drawing families"):
        LoraSpec(id="l", source="s", family="resampler")
    for family in ("sd3", "flux"):  # their pipelines load no adapters: refused, not ignored
        with pytest.raises(ValueError, match="not supported"):
            LoraSpec(id="l", source="s", family=family)


def test_resolve_loras_fills_default_weights_and_refuses_what_does_not_fit():
    registry = build_registry(PACKAGED_REGISTRY, (), None)
    model = registry.models["tiny-sd"]
    choices = [LoraChoice(id="tiny-sd-lora")]
    assert resolve_loras(registry, model, choices) == [LoraWeight(id="tiny-sd-lora", weight=1.0)]
    assert resolve_loras(registry, model, None) == []
    with pytest.raises(LatentqError) as refused:
        resolve_loras(registry, registry.models["tiny-sdxl"], choices)
    assert refused.value.name == "invalid_lora"
    assert "made for tiny-sd" in str(refused.value) and "tiny-sdxl-lora" in str(refused.value)


class FakeLoraPipe:
    """Records the adapter calls diffusers' pipeline would get; each adapter weighs 1 MiB."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.unet = None

    def load_lora_weights(self, path: str, adapter_name: str, **options) -> None:
        self.calls.append(("load", path, adapter_name))

    def delete_adapters(self, name: str) -> None:
        self.calls.append(("delete", name))

    def set_adapters(self, names: list[str], weights: list[float]) -> None:
        self.calls.append(("set", tuple(names), tuple(weights)))

    def disable_lora(self) -> None:
        self.calls.append(("disable",))

    def enable_lora(self) -> None:
        self.calls.append(("enable",))


def test_the_cache_loads_once_unloads_the_least_recently_used_and_disables_for_no_adapters():
    pipe = FakeLoraPipe()
    cache = LoadedAdapters(pipe, lambda lora_id: AdapterFile(f"/loras/{lora_id}"), max_loaded=2)
    cache.activate([LoraWeight(id="a", weight=1.0)])
    cache.activate([LoraWeight(id="a", weight=0.5), LoraWeight(id="b", weight=1.0)])
    cache.activate([])
    cache.activate([LoraWeight(id="a", weight=1.0)])
    cache.activate([LoraWeight(id="c", weight=1.0)])  # full: b (least recently used) goes
    assert pipe.calls == [
        ("load", "/loras/a", "lora1"), ("set", ("lora1",), (1.0,)),
        ("load", "/loras/b", "lora2"), ("set", ("lora1", "lora2"), (0.5, 1.0)),
        ("disable",),
        ("enable",), ("set", ("lora1",), (1.0,)),
        ("delete", "lora2"), ("load", "/loras/c", "lora3"), ("set", ("lora3",), (1.0,)),
    ]  # fmt: skip
    assert list(cache.loaded) == ["a", "c"]


def test_the_adapters_of_the_call_stay_even_over_the_cap():
    pipe = FakeLoraPipe()
    cache = LoadedAdapters(pipe, lambda lora_id: AdapterFile(lora_id), max_loaded=1)
    cache.activate([LoraWeight(id="a", weight=1.0), LoraWeight(id="b", weight=1.0)])
    assert list(cache.loaded) == ["a", "b"]
    cache.activate([LoraWeight(id="c", weight=1.0)])
    assert list(cache.loaded) == ["c"]


def test_a_round_with_the_same_adapters_as_the_last_sets_nothing():
    pipe = FakeLoraPipe()
    cache = LoadedAdapters(pipe, lambda lora_id: AdapterFile(lora_id), max_loaded=4)
    cache.activate([LoraWeight(id="a", weight=1.0)])
    cache.activate([LoraWeight(id="a", weight=1.0)])
    cache.activate([LoraWeight(id="a", weight=0.5)])
    assert [call[0] for call in pipe.calls] == ["load", "set", "set"]


def test_image_files_name_the_adapters():
    job = spec("a cat", [A, B])
    assert parameters_text(job, 1).splitlines()[0] == "a cat <lora:a:1> <lora:b:0.5>"
    assert reproduce_request(job, 1)["loras"] == [{"id": "a", "weight": 1.0}, {"id": "b", "weight": 0.5}]
    assert "loras" not in reproduce_request(spec("a cat", []), 1)
    assert parameters_text(spec("a cat", []), 1).splitlines()[0] == "a cat"


def test_the_memory_cap_unloads_the_least_recently_used(monkeypatch):
    import worker.diffusion.adapters as adapters

    monkeypatch.setattr(adapters, "adapter_bytes", lambda _pipe, _name: 2**20)  # 1 MiB each
    pipe = FakeLoraPipe()
    cache = LoadedAdapters(pipe, lambda lora_id: AdapterFile(lora_id), max_loaded=8, max_bytes=2 * 2**20)
    for lora_id in ("a", "b", "c"):
        cache.activate([LoraWeight(id=lora_id, weight=1.0)])
    assert list(cache.loaded) == ["b", "c"] and cache.loaded_bytes == 2 * 2**20
    assert ("delete", "lora1") in pipe.calls
