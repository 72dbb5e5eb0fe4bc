"""The VAE across calls: SDXL's fp32 upcast undone after a decode that fails, without diffusers'
per-call notices; the tiny SDXL forced to fp16 on the CPU stands in for CUDA fp16."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from latentq.contract import JobSpec, WeightedPrompt
from worker.diffusion.pipelines import WarmPipeline
from worker.diffusion.quiet import DropNoise, quiet_third_party


def job(job_id: str = "sdxl") -> JobSpec:
    return JobSpec(job_id=job_id, model="m", prompts=[WeightedPrompt(text="a", weight=1.0)], width=64,
                   height=64, steps=1, cfg_scale=7.0, samples=1, seed=3, sampler="K_EULER")  # fmt: skip


class DecodeFailingOnce:
    """Stands in for ``vae.decode``: the first call raises as an out-of-memory error would, noting
    the VAE's dtype then; later calls decode."""

    def __init__(self, vae) -> None:
        self.vae, self.decode, self.dtypes = vae, vae.decode, []

    def __call__(self, *args, **kwargs):
        if not self.dtypes:
            self.dtypes.append(self.vae.dtype)
            raise RuntimeError("CUDA out of memory. Tried to allocate 9.00 GiB (simulated)")
        return self.decode(*args, **kwargs)


@pytest.fixture(scope="module")
def fp16_sdxl(tiny_sdxl_model) -> WarmPipeline:
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_sdxl_model, dtype=torch.float16)
    assert pipe.vae.config.force_upcast  # diffusers decodes in fp32, as it does SDXL's on CUDA
    return WarmPipeline(pipe, torch.device("cpu"))


def test_the_next_sdxl_call_works_after_a_failed_decode(fp16_sdxl):
    vae = fp16_sdxl.pipe.vae
    vae.decode = failing = DecodeFailingOnce(vae)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            fp16_sdxl.generate(job(), {})
        assert failing.dtypes == [torch.float32]  # upcast by diffusers, then left so by the failure
        assert vae.dtype == torch.float16
        [image] = fp16_sdxl.generate(job(), {})
        assert np.asarray(image).std() > 0
        assert [len(images) for images in fp16_sdxl.generate_batch([(job("a"), None), (job("b"), None)])] == [
            1,
            1,
        ]
        assert vae.dtype == torch.float16
    finally:
        del vae.decode


def test_sdxl_calls_make_no_upcast_notices(fp16_sdxl):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()  # what the worker's diffusion layer does at import
        fp16_sdxl.generate(job(), {})
    assert not [str(warning.message) for warning in caught if "upcast_vae" in str(warning.message)]
    from diffusers.models.modeling_utils import logger

    notice = ("There are modules in AutoencoderKL that should be kept in float32: []. Casting directly "
              "with `to()` can lead to inconsistent results")  # fmt: skip
    assert not DropNoise().filter(logger.makeRecord(logger.name, 30, __file__, 1, notice, (), None))
