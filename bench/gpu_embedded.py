"""``bench.gpu_check``'s ``embedded`` stage: every embedded model built (``worker.embedded``) into a
temporary folder, loaded as the worker loads it (fp16 on CUDA; bf16 for SD3 and FLUX) and run
once; its row says whether every step's latents were finite, whether each image varies (not a
black or NaN-turned-constant image) and how far its pixels are from the same job in fp32 on CPU.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench import append_row, error_fields
from bench.gpu_stages import Sizes
from latentq.contract import JobSpec, WeightedPrompt

#: Each embedded generator: the worker class family that loads it, the job kind it runs, and the
#: base model of a ControlNet. Safety checkers are not generators and are left out.
MODELS = {
    "tiny-sd": ("sd", "text-to-image", None),
    "tiny-sdxl": ("sd", "text-to-image", None),
    "tiny-sd-inpainting": ("sd", "masking", None),
    "tiny-sd3": ("flow", "text-to-image", None),
    "tiny-flux": ("flow", "text-to-image", None),
    "tiny-x4-upscaler": ("upscaler", "upscale", None),
    "tiny-sd-controlnet": ("sd", "text-to-image", "tiny-sd"),
    "tiny-sdxl-controlnet": ("sd", "text-to-image", "tiny-sdxl"),
}


#: Largest image side of the check's jobs, pixels: fp16 trouble does not need more, and each job
#: also runs in fp32 on the CPU.
SIDE = 256


def load(name: str, folders: dict[str, Path], device: str) -> Any:
    """Load embedded model ``name`` from ``folders`` on ``device`` (``cuda``, ``cpu``) as the worker does."""
    from worker.diffusion.controlnets import load_controlnet
    from worker.diffusion.flow import FlowPipeline
    from worker.diffusion.pipelines import WarmPipeline
    from worker.diffusion.upscalers import Upscaler

    family, _task, base = MODELS[name]
    if base is not None:
        controlnet = load_controlnet(str(folders[name]), torch.device(device))
        return WarmPipeline.load(str(folders[base]), device, controlnets={name: controlnet})
    loader = {"sd": WarmPipeline, "flow": FlowPipeline, "upscaler": Upscaler}[family]
    return loader.load(str(folders[name]), device)


def job(name: str, side: int) -> tuple[JobSpec, dict[str, Image.Image]]:
    """Return the check's job for embedded model ``name`` at ``side`` pixels and its input images."""
    _family, task, base = MODELS[name]
    spec = JobSpec(
        job_id="check", model=name, prompts=[WeightedPrompt(text="a lighthouse", weight=1.0)], width=side,
        height=side, steps=4, cfg_scale=5.0, samples=2 if task == "text-to-image" else 1, seed=7,
        sampler="DDIM" if task == "upscale" else "K_EULER", task=task,
        strength=1.0 if task == "masking" else None, control_model=name if base else None,
    )  # fmt: skip
    gradient = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    init = Image.fromarray(np.stack([gradient, gradient.T, 255 - gradient], axis=-1))
    return spec, {"init": init.resize((side // 4, side // 4)) if task == "upscale" else init, "mask": mask,
                  "control": init}  # fmt: skip


def run(pipeline: Any, spec: JobSpec, inputs: dict) -> tuple[list[Image.Image], list[bool]]:
    """Run ``spec`` on ``pipeline``; return its images and, per step reported, whether latents were finite."""
    finite: list[bool] = []

    def on_step(_step: int, _total: int, latents: Any) -> bool:
        if latents is not None:
            finite.append(bool(torch.isfinite(latents).all()))
        return False

    return pipeline.generate(spec, inputs, on_step), finite


def check_model(name: str, folders: dict[str, Path], sizes: Sizes) -> dict:
    """Return ``name``'s row: its run on the check's device against the same job in fp32 on CPU."""
    spec, inputs = job(name, min(sizes.side, SIDE))
    row: dict[str, Any] = {"stage": "embedded", "model": name, "task": spec.task, "side": spec.width,
                           "device": sizes.device.type}  # fmt: skip
    try:
        pipeline = load(name, folders, sizes.device.type)
        denoiser = getattr(pipeline.pipe, "unet", None) or pipeline.pipe.transformer
        row["dtype"] = str(denoiser.dtype)
        images, finite = run(pipeline, spec, inputs)
        reference, _ = run(load(name, folders, "cpu"), spec, inputs)
        pixels = [np.asarray(image, dtype=np.int16) for image in images]
        row.update(
            images=len(images), steps_reported=len(finite), latents_finite=all(finite) if finite else None,
            pixel_std=[round(float(image.std()), 2) for image in pixels],
            max_pixel_difference_vs_fp32=max(int(np.abs(image - np.asarray(ref, dtype=np.int16)).max())
                                             for image, ref in zip(pixels, reference, strict=True)),
        )  # fmt: skip
        row["ok"] = bool(images) and row["latents_finite"] is not False and min(row["pixel_std"]) > 1
    except Exception as error:  # noqa: BLE001 - recorded: the next model still runs
        row.update(ok=False, **error_fields(error))
    return row


def embedded_stage(out: Path, sizes: Sizes) -> int:
    """Build every embedded generator and check each; exit 1 when any is not ok."""
    from worker.embedded.models import build_tiny_model

    failures = 0
    with tempfile.TemporaryDirectory(prefix="latentq-check-") as temporary:
        folders: dict[str, Path] = {}
        for name in MODELS:
            try:
                folders[name] = build_tiny_model(Path(temporary) / name, name)
            except Exception as error:  # noqa: BLE001 - recorded: the other models still run
                append_row(out, {"stage": "embedded", "model": name, "ok": False, "phase": "build",
                                 **error_fields(error)})  # fmt: skip
                failures += 1
                continue
            row = check_model(name, folders, sizes)
            failures += not row["ok"]
            append_row(out, row)
            print(row, flush=True)
    return 1 if failures else 0
