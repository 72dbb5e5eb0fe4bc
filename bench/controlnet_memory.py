"""What a ControlNet costs a warm worker: its controlled pipelines made with ``from_pipe``.

Builds Stable Diffusion 1.5's architecture (``bench.memory``) and an SD 1.5 ControlNet from its
UNet's configuration (``ControlNetModel.from_unet``: the architecture of every SD 1.5 ControlNet),
random weights, fp32, CPU. Measures the process's resident memory (RSS) after the warm model,
after loading the ControlNet, and after ``WarmPipeline`` makes its three controlled pipelines
(text-to-image, image-to-image, inpainting) with ``from_pipe``; and counts the bytes of the
distinct parameters all the worker's pipelines hold against what separately loaded pipelines
(each with its own copy of the base model) would hold.

    .venv/bin/python -m bench.controlnet_memory [--json bench/results/controlnet_memory.json]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from bench import write_result
from bench.memory import build_sd15, rss_mib
from latentq.contract import JobSpec, WeightedPrompt


def parameters(pipe: Any) -> dict[int, int]:
    """Return the bytes of each parameter of ``pipe``'s modules, by the tensor's identity."""
    found = {}
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for parameter in component.parameters():
                found[id(parameter)] = parameter.numel() * parameter.element_size()
    return found


def main() -> int:
    """Measure; print a table; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from diffusers import ControlNetModel

    from worker.diffusion.pipelines import WarmPipeline

    gc.collect()
    baseline = rss_mib()
    pipe = build_sd15()
    warm = WarmPipeline(pipe, torch.device("cpu"))
    gc.collect()
    model_only = rss_mib()
    with torch.no_grad():
        controlnet = ControlNetModel.from_unet(pipe.unet)
    warm.controlnets = {"canny": controlnet}
    gc.collect()
    with_controlnet = rss_mib()
    for task in ("text-to-image", "image-to-image", "masking"):
        spec = JobSpec(job_id="m", model="m", prompts=[WeightedPrompt(text="m", weight=1.0)], width=64,
                       height=64, steps=1, cfg_scale=7.0, samples=1, seed=1, sampler="K_EULER", task=task,
                       control_model="canny")  # fmt: skip
        warm.pipe_for(spec)
    gc.collect()
    with_pipelines = rss_mib()
    pipelines = [*warm.pipes.values(), *warm.controlled.values()]
    shared: dict[int, int] = {}
    for each in pipelines:
        shared |= parameters(each)
    separate = sum(sum(parameters(each).values()) for each in pipelines)
    mib = 2**20
    shared_mib = sum(shared.values()) / mib
    rows = {
        "warm model (text-to-image, image-to-image, inpainting)": model_only - baseline,
        "+ the ControlNet loaded": with_controlnet - model_only,
        "+ its 3 controlled pipelines (from_pipe)": with_pipelines - with_controlnet,
    }
    result = {
        "benchmark": "controlnet_memory",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "model": "SD 1.5 architecture and an SD 1.5 ControlNet (from_unet), random weights, fp32",
        "controlnet_parameters": sum(p.numel() for p in controlnet.parameters()),
        "rss_mib": rows,
        "distinct_parameter_mib_all_6_pipelines": shared_mib,
        "parameter_mib_if_each_pipeline_had_its_own_copy": separate / mib,
        "controlled_pipelines_share_base": all(
            p.unet is pipe.unet and p.vae is pipe.vae and p.controlnet is controlnet
            for p in warm.controlled.values()
        ),
    }
    print(result["model"])
    for name, value in rows.items():
        print(f"{name:58} {value:8.0f} MiB RSS")
    distinct, copies, shares = shared_mib, separate / mib, result["controlled_pipelines_share_base"]
    print(
        f"distinct parameters of all 6 pipelines: {distinct:,.0f} MiB; each its own copy: {copies:,.0f} MiB"
    )
    print(f"controlled pipelines share the model and the ControlNet: {shares}")
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
