"""The few-step fast path on the real tiny pipelines (no services): prompt conditioning cached
across jobs and schedulers reused across calls give, to the bit, what plain diffusers gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from latentq.contract import JobSpec, LoraWeight, WeightedPrompt
from worker.diffusion.pipelines import WarmPipeline
from worker.diffusion.prompts import ConditioningCache


def job(steps: int = 4, sampler: str = "K_EULER", negative: str | None = None, seed: int = 3) -> JobSpec:
    prompts = [WeightedPrompt(text="a lighthouse at dusk", weight=1.0)]
    if negative is not None:
        prompts.append(WeightedPrompt(text=negative, weight=-1.0))
    return JobSpec(job_id="j", model="m", prompts=prompts, width=64, height=64, steps=steps, cfg_scale=7.0,
                   samples=1, seed=seed, sampler=sampler)  # fmt: skip


def plain(model_dir, spec: JobSpec, scheduler_class) -> np.ndarray:
    """The image plain diffusers makes for ``spec`` (strings in, its own text encoding)."""
    pipe = AutoPipelineForText2Image.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    negative = next((p.text for p in spec.prompts if p.weight < 0), None)
    generator = torch.Generator("cpu").manual_seed(spec.seed)
    result = pipe(
        spec.prompts[0].text, negative_prompt=negative, width=64, height=64, guidance_scale=spec.cfg_scale,
        num_inference_steps=spec.steps, generator=generator,
    )  # fmt: skip
    return np.asarray(result.images[0])


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_sdxl_model"])
def test_a_prompt_encoded_once_gives_plain_diffusers_pixels_on_every_later_job(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    warm = WarmPipeline.load(str(model_dir), "cpu")
    for spec in (job(), job(negative="fog"), job(seed=4), job(negative="fog", seed=5)):
        expected = plain(model_dir, spec, EulerDiscreteScheduler)
        first, again = warm.generate(spec, {}), warm.generate(spec, {})  # again: from the cache
        assert np.array_equal(np.asarray(first[0]), expected)
        assert np.array_equal(np.asarray(again[0]), expected)
    assert len(warm.prompts.cached) == 2  # two prompt sets: the seed is no part of the key


def test_a_scheduler_reused_across_step_counts_gives_what_a_fresh_one_gives(tiny_model):
    warm = WarmPipeline.load(str(tiny_model), "cpu")
    warm.generate(job(steps=7, sampler="K_DPMPP_2M"), {})
    warm.generate(job(steps=2, sampler="K_DPMPP_2M"), lambda step, total, latents: step >= 1)  # cut short
    reused = warm.generate(job(steps=4, sampler="K_DPMPP_2M"), {})
    assert warm.schedulers.get("K_DPMPP_2M") is warm.pipe.scheduler
    assert np.array_equal(np.asarray(reused[0]), plain(tiny_model, job(steps=4), DPMSolverMultistepScheduler))


def test_the_conditioning_cache_keys_on_the_active_loras_and_drops_the_least_recent(tiny_model):
    warm = WarmPipeline.load(str(tiny_model), "cpu")
    cache = ConditioningCache(entries=2)
    prompts = job().prompts
    with torch.inference_mode():
        bare = cache.get(warm.pipe, prompts, [], warm.device)
        cache.get(warm.pipe, prompts, [LoraWeight(id="style", weight=0.5)], warm.device)
        assert len(cache.cached) == 2  # a LoRA may change the text encoder: its own entry
        assert cache.get(warm.pipe, prompts, [], warm.device) is bare
        cache.get(warm.pipe, job(negative="fog").prompts, [], warm.device)
    assert len(cache.cached) == 2 and (((p.text, p.weight) for p in prompts), ()) not in cache.cached
    assert [key[1] for key in cache.cached] == [(), ()]  # the LoRA entry, least recent, went first
