"""What LoRA adapters cost a worker: memory per adapter, the first load, and switching per round.

Memory: the embedded adapters as the worker's cache measures them (``adapter_bytes``), and a
rank-4 and a rank-16 LoRA on the attention projections of Stable Diffusion 1.5's UNet and text
encoder, built on the meta device from the published configurations (no weights allocated).

Switching: the embedded ``tiny-sd`` in one process (``WarmPipeline`` with its adapter cache), one
seeded 64x64 K_EULER job per round, in four sequences (blocks of rounds taking turns, so drift on
a shared machine hits each alike): ``base`` (no adapters), ``same`` (one adapter every round),
``switch`` (two loaded adapters alternating, so every round calls ``set_adapters`` with a new
set), ``on-off`` (an adapter round, then a base round: ``disable_lora``/``enable_lora``).

    .venv/bin/python -m bench.lora [--rounds 30] [--steps 20] [--json bench/results/lora.json]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import write_result
from bench.memory import TEXT, UNET
from latentq.contract import JobSpec, LoraWeight, WeightedPrompt

#: Blocks of each sequence (they take turns).
PASSES = 3
SEQUENCES = {
    "base": [[], []],
    "same": [[LoraWeight(id="a", weight=1.0)], [LoraWeight(id="a", weight=1.0)]],
    "switch": [[LoraWeight(id="a", weight=1.0)], [LoraWeight(id="b", weight=1.0)]],
    "on-off": [[LoraWeight(id="a", weight=1.0)], []],
}


def sd15_lora_mib(rank: int) -> float:
    """MiB (fp32) of a rank-``rank`` LoRA on SD 1.5's UNet and text-encoder attention projections."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from transformers import CLIPTextConfig, CLIPTextModel

    from worker.embedded.loras import TEXT_TARGETS, UNET_TARGETS

    total = 0
    with torch.device("meta"):
        for model, targets in ((UNet2DConditionModel(**UNET), UNET_TARGETS),
                               (CLIPTextModel(CLIPTextConfig(**TEXT)), TEXT_TARGETS)):  # fmt: skip
            model.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
            total += sum(p.numel() * 4 for name, p in model.named_parameters() if "lora_" in name)
    return total / 2**20


def warm_pipeline(directory: Path):  # -> WarmPipeline with two adapters ("a", "b") of the same file
    from worker.diffusion.adapters import AdapterFile, LoadedAdapters
    from worker.diffusion.pipelines import WarmPipeline
    from worker.embedded.loras import LORA_WEIGHT_NAME, ensure_tiny_lora
    from worker.embedded.models import ensure_tiny_model

    model = ensure_tiny_model(directory / "tiny-sd", "tiny-sd")
    lora = ensure_tiny_lora(directory / "tiny-sd-lora", "tiny-sd-lora")
    warm = WarmPipeline.load(str(model), "cpu")
    warm.adapters = LoadedAdapters(warm.pipe, lambda _id: AdapterFile(str(lora), LORA_WEIGHT_NAME), 8)
    return warm


def spec(loras: list[LoraWeight], steps: int) -> JobSpec:
    return JobSpec(job_id="bench", model="tiny-sd", prompts=[WeightedPrompt(text="a lighthouse", weight=1.0)],
                   width=64, height=64, steps=steps, cfg_scale=7.0, samples=1, seed=7, sampler="K_EULER",
                   loras=loras)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of each sequence")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core: steadier on a shared machine
    with tempfile.TemporaryDirectory() as folder:
        warm = warm_pipeline(Path(folder))
        started = time.perf_counter()
        warm.use_loras([LoraWeight(id="a", weight=1.0)])
        first_load_ms = (time.perf_counter() - started) * 1000
        warm.use_loras([LoraWeight(id="b", weight=1.0)])
        adapter_kib = warm.adapters.loaded["a"][1] / 1024
        warm.generate(spec([], args.steps), {})  # warm-up
        times: dict[str, list[float]] = {name: [] for name in SEQUENCES}
        switches: dict[str, list[float]] = {name: [] for name in SEQUENCES}
        activate = warm.adapters.activate

        def timed_activate(loras: list[LoraWeight]) -> None:
            begun = time.perf_counter()
            activate(loras)
            switches[current].append((time.perf_counter() - begun) * 1000)

        warm.adapters.activate = timed_activate  # type: ignore[method-assign]
        # Blocks of each sequence in turn, PASSES times: drift hits each alike. A block's first
        # round follows another sequence's state and is not counted.
        for _pass in range(PASSES):
            for current, sets in SEQUENCES.items():
                for index in range(args.rounds // PASSES + 1):
                    begun = len(switches[current])
                    started = time.perf_counter()
                    warm.generate(spec(sets[index % 2], args.steps), {})
                    if index == 0:
                        del switches[current][begun:]
                    else:
                        times[current].append((time.perf_counter() - started) * 1000)
    medians = {name: statistics.median(values) for name, values in times.items()}
    switch_ms = {name: statistics.median(values) for name, values in switches.items()}
    result = {
        "machine": platform.platform(), "torch": torch.__version__, "rounds": args.rounds,
        "steps": args.steps,
        "tiny_sd_adapter_kib": adapter_kib, "first_load_ms": first_load_ms,
        "sd15_rank4_mib": sd15_lora_mib(4), "sd15_rank16_mib": sd15_lora_mib(16),
        "median_round_ms": medians, "ratio_to_same": {n: m / medians["same"] for n, m in medians.items()},
        "median_activate_ms": switch_ms,
    }  # fmt: skip
    print(f"tiny-sd adapter: {adapter_kib:.1f} KiB loaded; first load {first_load_ms:.0f} ms")
    print(f"SD 1.5 LoRA (UNet + text encoder attention, fp32): rank 4 {result['sd15_rank4_mib']:.2f} MiB, "
          f"rank 16 {result['sd15_rank16_mib']:.2f} MiB")  # fmt: skip
    print(f"{'sequence':<8} {'median round':>13} {'vs same':>8} {'adapter switch':>15}")
    for name, median in medians.items():
        print(f"{name:<8} {median:>10.1f} ms {median / medians['same']:>8.3f} {switch_ms[name]:>12.2f} ms")
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
