"""The stages of ``bench.gpu_check`` that are not benchmarks of their own, one process each:
``python -m bench.gpu_stages NAME --out FILE [--dry-run]`` appends its rows to FILE.

``--dry-run``: on CPU, with the embedded tiny models and tiny sizes, so every stage can be run
where no GPU is; the figures are then meaningless, the code paths are the same.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from bench import append_row, error_fields
from bench.flow_gpu import synchronized_seconds

#: Distributions whose versions the ``env`` stage records.
DISTRIBUTIONS = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "triton",
                 "numpy", "pydantic", "tokenizers")  # fmt: skip
#: Images per call at which the ``memory`` stage measures the peak.
MEMORY_BATCHES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Sizes:
    """Where and how big a stage runs: ``side`` pixels square, ``steps`` steps, ``tiny`` models."""

    device: torch.device
    tiny: bool
    side: int
    steps: int


def sizes_for(dry_run: bool) -> Sizes:
    """Return the CUDA sizes (full-size SD 1.5 at 512x512, 10 steps) or the dry run's (CPU, tiny)."""
    if dry_run:
        return Sizes(torch.device("cpu"), tiny=True, side=64, steps=2)
    return Sizes(torch.device("cuda"), tiny=False, side=512, steps=10)


def gib(count: float) -> float:
    """Return ``count`` bytes in GiB, rounded to 3 places."""
    return round(count / 2**30, 3)


def env_stage(out: Path, sizes: Sizes) -> int:
    """Record Python, platform, the distributions' versions, CUDA, cuDNN, the GPU and its driver."""
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    row: dict[str, Any] = {
        "stage": "env", "python": platform.python_version(), "platform": platform.platform(),
        "versions": versions, "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cuda_available": torch.cuda.is_available(),
    }  # fmt: skip
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        row.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                   gpu_memory_gib=gib(properties.total_memory),
                   multiprocessors=properties.multi_processor_count)  # fmt: skip
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
        row["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    append_row(out, row)
    print(row)
    return 0


def pytest_stage(out: Path, sizes: Sizes) -> int:
    """Run every GPU-marked test (the files that mark any), one row per test as it finishes."""
    files = sorted(str(path) for path in Path("tests").rglob("test_*.py") if "mark.gpu" in path.read_text())
    argv = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider",
            "-p", "bench.pytest_rows", "--rows", str(out), "--continue-on-collection-errors"]  # fmt: skip
    code = subprocess.call(argv)
    append_row(out, {"stage": "pytest", "summary": True, "returncode": code, "files": files})
    return code


def memory_stage(out: Path, sizes: Sizes) -> int:
    """Record the worker's memory estimate (``WarmPipeline``'s ``memory_profile`` after ``warm_up``, its
    ``batch_limit``) next to the measured peak of 1, 2, 4 and 8 images of ``side`` pixels."""
    from bench.gpu import batch_specs, build
    from worker.diffusion.pipelines import WarmPipeline

    device = sizes.device
    warm = WarmPipeline(build("sd15", device, sizes.tiny), device)
    warm.warm_up()
    profile = warm.memory_profile  # image_bytes, call_bytes, decode_bytes, decode_budget (None on CPU)
    estimates = {name: gib(value) for name, value in (vars(profile) if profile else {}).items()}
    for images in MEMORY_BATCHES:
        specs = batch_specs("sd15", sizes.side, images, 2)  # the peak does not depend on the steps
        row: dict[str, Any] = {"stage": "memory", "images": images, "side": sizes.side,
                               "estimates_gib": estimates}  # fmt: skip
        try:
            row["batch_limit"] = warm.batch_limit(specs[0])
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            warm.generate_batch([(spec, None) for spec in specs])
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device)
                row.update(peak_gib=gib(peak), above_weights_gib=gib(peak - before),
                           reserved_gib=gib(torch.cuda.memory_reserved(device)))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - recorded: the next batch size still runs
            row.update(error_fields(error))
        append_row(out, row)
        print(row)
    return 0


def channels_last_stage(out: Path, sizes: Sizes) -> int:
    """Record seconds per UNet step (latents out, no decode) with a contiguous and a channels-last
    UNet, alternating A/B/A/B so a clock or thermal drift shows as a difference between trials."""
    from bench.gpu import build

    pipe = build("sd15", sizes.device, sizes.tiny)
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    for trial, name in enumerate(["contiguous", "channels_last"] * 2):
        pipe.unet.to(memory_format=layouts[name])

        def run() -> None:
            with torch.inference_mode():
                pipe("a lighthouse", width=sizes.side, height=sizes.side, num_inference_steps=sizes.steps,
                     output_type="latent", generator=torch.Generator("cpu").manual_seed(1))  # fmt: skip

        run()  # a new layout picks new kernels: not timed
        seconds = synchronized_seconds(run, sizes.device)
        row = {"stage": "channels_last", "layout": name, "trial": trial, "side": sizes.side,
               "steps": sizes.steps, "seconds_per_step": round(seconds / sizes.steps, 4)}  # fmt: skip
        append_row(out, row)
        print(row)
    return 0


def compile_stage(out: Path, sizes: Sizes) -> int:
    """Record each call's seconds and dynamo's graph counters through a compiled UNet (the worker's
    ``LATENTQ_COMPILE`` path on CUDA; the ``eager`` backend on CPU) across sizes, cfg 1 and a
    prompt over 77 tokens; the recompiles themselves are logged (``TORCH_LOGS=recompiles``)."""
    from torch._dynamo.utils import counters

    from bench.gpu import batch_specs, build
    from latentq.contract import WeightedPrompt
    from worker.diffusion.pipelines import WarmPipeline

    device, side = sizes.device, sizes.side // 2 if sizes.device.type == "cuda" else sizes.side
    # The tiny UNet: compiling a full-size one takes minutes, more than this stage has.
    warm = WarmPipeline(build("sd15", device, tiny=True), device, compile_unet=device.type == "cuda")
    if device.type != "cuda":
        warm.pipe.unet = torch.compile(warm.pipe.unet, backend="eager")
    [spec] = batch_specs("sd15", side, 1, 2)
    long_prompt = [WeightedPrompt(text="lighthouse " * 90, weight=1.0)]
    calls = [("first size", spec), ("x1.5 size", spec.model_copy(update={"width": side * 3 // 2})),
             ("x2 size", spec.model_copy(update={"width": side * 2, "height": side * 2})),
             ("cfg 1", spec.model_copy(update={"cfg_scale": 1.0})),
             ("long prompt", spec.model_copy(update={"prompts": long_prompt})),
             ("first size again", spec)]  # fmt: skip
    for label, call in calls:
        row: dict[str, Any] = {"stage": "compile", "call": label, "width": call.width, "height": call.height,
                               "cfg": call.cfg_scale}  # fmt: skip
        try:
            row["seconds"] = round(synchronized_seconds(lambda c=call: warm.generate(c, {}), device), 3)
        except Exception as error:  # noqa: BLE001 - recorded: the next call still runs
            row.update(error_fields(error))
        row["dynamo"] = {name: dict(counters[name]) for name in ("stats", "recompiles") if name in counters}
        append_row(out, row)
        print(row)
    return 0


STAGES: dict[str, Callable[[Path, Sizes], int]] = {
    "env": env_stage,
    "pytest": pytest_stage,
    "memory": memory_stage,
    "channels_last": channels_last_stage,
    "compile": compile_stage,
}


def main(argv: list[str] | None = None) -> int:
    """Run one stage; its exit code is the stage's."""
    from bench.gpu_embedded import embedded_stage

    stages = {**STAGES, "embedded": embedded_stage}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=sorted(stages))
    parser.add_argument("--out", type=Path, required=True, help="append the rows here (JSON lines)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models and sizes")
    args = parser.parse_args(argv)
    return stages[args.stage](args.out, sizes_for(args.dry_run))


if __name__ == "__main__":
    sys.exit(main())
