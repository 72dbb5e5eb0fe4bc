"""The CUDA path: fp16 weights on the GPU, images out. Skipped where no CUDA device exists."""

from __future__ import annotations

import pytest
import torch

from latentq.contract import JobSpec
from worker.pipeline import TextToImage

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


def test_cuda_pipeline_runs_fp16_and_keeps_seeds_reproducible(tiny_model):
    pipeline = TextToImage.load(str(tiny_model), "auto")
    assert pipeline.device.type == "cuda"
    assert pipeline.pipe.unet.dtype == torch.float16
    spec = JobSpec(
        job_id="gpu", model="m", prompt="a lighthouse", negative_prompt=None, width=512, height=512,
        steps=20, cfg_scale=7, samples=2, seed=42, sampler="K_EULER",
    )  # fmt: skip
    first, again = pipeline.generate(spec), pipeline.generate(spec)
    assert [image.size for image in first] == [(512, 512)] * 2
    assert [image.tobytes() for image in first] == [image.tobytes() for image in again]
