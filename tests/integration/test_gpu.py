"""The CUDA path: fp16 weights on the GPU, images out. Skipped where no CUDA device exists."""

from __future__ import annotations

import pytest
import torch

from latentq.contract import JobSpec, WeightedPrompt
from worker.diffusion.pipelines import WarmPipeline

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

PLAIN = [WeightedPrompt(text="a lighthouse", weight=1.0)]
# Blended, chunked (over 75 tokens) and negative: the embedding path, in fp16.
WEIGHTED = [WeightedPrompt(text="lighthouse " * 90, weight=1.0), WeightedPrompt(text="storm", weight=0.5),
            WeightedPrompt(text="fog", weight=-1.0)]  # fmt: skip


@pytest.mark.parametrize("prompts", [PLAIN, WEIGHTED], ids=["plain", "weighted"])
@pytest.mark.parametrize("model", ["tiny_model", "tiny_sdxl_model"])
def test_cuda_pipeline_runs_fp16_and_keeps_seeds_reproducible(request, model, prompts):
    pipeline = WarmPipeline.load(str(request.getfixturevalue(model)), "auto")
    assert pipeline.device.type == "cuda"
    assert pipeline.pipe.unet.dtype == torch.float16
    spec = JobSpec(
        job_id="gpu", model="m", prompts=prompts, width=512, height=512, steps=20, cfg_scale=7, samples=2,
        seed=42, sampler="K_DPMPP_2M_KARRAS",
    )  # fmt: skip
    first, again = pipeline.generate(spec, {}), pipeline.generate(spec, {})
    assert [image.size for image in first] == [(512, 512)] * 2
    assert [image.tobytes() for image in first] == [image.tobytes() for image in again]


@pytest.mark.parametrize("task", ["image-to-image", "masking"])
def test_cuda_image_jobs_run_fp16(tiny_model, task):
    from PIL import Image

    pipeline = WarmPipeline.load(str(tiny_model), "auto")
    spec = JobSpec(
        job_id="gpu", model="m", prompts=PLAIN, width=512, height=512, steps=20, cfg_scale=7, samples=1,
        seed=42, sampler="K_EULER", task=task, strength=0.6,
    )  # fmt: skip
    mask = Image.new("L", (512, 512), 0)
    mask.paste(255, (128, 128, 384, 384))
    inputs = {"init": Image.new("RGB", (512, 512), (200, 40, 40)), "mask": mask}
    [image] = pipeline.generate(spec, inputs)
    assert image.size == (512, 512)
    if task == "masking":
        assert image.getpixel((0, 0)) == (200, 40, 40)  # outside the mask: the init image, exactly


def test_cuda_batches_are_capped_by_measured_memory_and_match_images_alone(tiny_model):
    pipeline = WarmPipeline.load(str(tiny_model), "auto")
    pipeline.warm_up()
    assert pipeline.image_bytes and pipeline.image_bytes > 0
    specs = [
        JobSpec(job_id=f"gpu-{index}", model="m", prompts=[WeightedPrompt(text=f"light {index}", weight=1.0)],
                width=512, height=512, steps=20, cfg_scale=7, samples=1, seed=100 + index,
                sampler="K_EULER")
        for index in range(4)
    ]  # fmt: skip
    assert pipeline.batch_limit(specs[0]) >= 1
    batched = pipeline.generate_batch([(spec, None) for spec in specs])
    for spec, [image] in zip(specs, batched, strict=True):
        [alone] = pipeline.generate(spec, {})
        difference = torch.tensor(list(image.tobytes())) - torch.tensor(list(alone.tobytes()))
        assert difference.abs().max() <= 8  # fp16 batch rounding; the figure goes in docs/BENCHMARKS.md
