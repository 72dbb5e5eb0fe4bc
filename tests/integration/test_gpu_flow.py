"""The CUDA path of the flow-matching families: bf16 weights, finite latents, varied images, seeds
kept. Skipped where no CUDA device exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latentq.contract import JobSpec, WeightedPrompt
from tests.conftest import embedded_model
from worker.diffusion.flow import FlowPipeline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_cuda_flow_pipeline_runs_bf16_with_finite_varied_output(models_dir, name):
    pipeline = FlowPipeline.load(str(embedded_model(models_dir, name)), "auto")
    assert pipeline.device.type == "cuda"
    assert pipeline.pipe.transformer.dtype == torch.bfloat16 and pipeline.pipe.vae.dtype == torch.bfloat16
    pipeline.warm_up()
    assert pipeline.memory_profile and pipeline.memory_profile.image_bytes > 1
    spec = JobSpec(
        job_id="gpu", model=name, prompts=[WeightedPrompt(text="a lighthouse", weight=1.0)], width=512,
        height=512, steps=12, cfg_scale=4.0, samples=2, seed=42, sampler="K_EULER",
    )  # fmt: skip
    latents: list[torch.Tensor] = []
    first = pipeline.generate(
        spec, {}, lambda _step, _total, step_latents: latents.append(step_latents) and False
    )
    again = pipeline.generate(spec, {})
    assert latents and all(bool(torch.isfinite(step).all()) for step in latents)
    assert [image.size for image in first] == [(512, 512)] * 2
    assert all(np.asarray(image).std() > 1 for image in first)  # not a constant (black or NaN) image
    assert first[0].tobytes() != first[1].tobytes()  # each image its own seed
    assert [image.tobytes() for image in first] == [image.tobytes() for image in again]
    init = Image.new("RGB", (512, 512), (200, 40, 40))
    for task in ("image-to-image", "masking"):
        image_spec = spec.model_copy(update={"task": task, "strength": 0.6, "samples": 1})
        [image] = pipeline.generate(image_spec, {"init": init, "mask": Image.new("L", (512, 512), 255)})
        assert image.size == (512, 512) and np.asarray(image).std() > 1
