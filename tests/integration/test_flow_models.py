"""The flow-matching families (sd3, flux) through the service: seeded jobs equal plain diffusers
(text-to-image, image-to-image, inpainting), their samplers and FLUX's lack of negative prompts
are enforced at the door, and batched jobs keep their own seeds."""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from tests.conftest import embedded_model, running_worker, wait_for_job, worker_env
from tests.integration.test_image_jobs import INIT, MASK, b64, pixels, run, seeded

FLOW_MODELS = ("tiny-sd3", "tiny-flux")
PROMPT = "a lighthouse at dusk"
#: Same-model jobs in one call: float rounding may move a pixel by this many levels.
TOLERANCE = 2


@pytest.fixture(scope="module")
def flow_worker(redis_server, s3_server, models_dir, tmp_path_factory):
    """A worker serving both embedded flow models."""
    for name in FLOW_MODELS:
        embedded_model(models_dir, name)
    env = worker_env(redis_server, s3_server, models_dir, ",".join(FLOW_MODELS))
    with running_worker(env, tmp_path_factory.mktemp("logs") / "flow-worker.log", "tiny-flux") as process:
        yield process


@pytest.fixture(scope="module")
def plain(models_dir, flow_worker):
    """Plain diffusers pipelines of each flow model: text-to-image, image-to-image, inpainting."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    pipes = {}
    for name in FLOW_MODELS:
        text = AutoPipelineForText2Image.from_pretrained(models_dir / name)
        pipes[name] = (
            text,
            AutoPipelineForImage2Image.from_pipe(text),
            AutoPipelineForInpainting.from_pipe(text),
        )
        for pipe in pipes[name]:
            pipe.set_progress_bar_config(disable=True)
    return pipes


#: (model, sampler) pairs each family runs: flow-matching Euler for both, Heun for SD3.
MODEL_SAMPLERS = [("tiny-sd3", "K_EULER"), ("tiny-flux", "K_EULER"), ("tiny-sd3", "K_HEUN")]
#: The diffusers scheduler each sampler name must mean for these families.
FLOW_SCHEDULERS = {"K_EULER": "FlowMatchEulerDiscreteScheduler", "K_HEUN": "FlowMatchHeunDiscreteScheduler"}


@contextmanager
def scheduled(pipe, sampler: str):
    """``pipe`` with the flow scheduler of ``sampler`` (from its own config) for the block."""
    import diffusers

    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, FLOW_SCHEDULERS[sampler]).from_config(original.config)
    try:
        yield pipe
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize(("model", "sampler"), MODEL_SAMPLERS)
def test_text_to_image_equals_diffusers(client, flow_worker, plain, model, sampler):
    body = {"model": model, "prompt": PROMPT, "width": 64, "height": 96, "steps": 8, "cfg_scale": 4.0}
    negative = {"negative_prompt": "fog"} if model == "tiny-sd3" else {}
    job, served = run(client, **body, **negative, samples=2, seed=3, sampler=sampler)
    assert job["request"]["sampler"] == sampler
    with scheduled(plain[model][0], sampler) as pipe:
        expected = pipe(
            PROMPT, width=64, height=96, num_inference_steps=8, guidance_scale=4.0, num_images_per_prompt=2,
            generator=[seeded(3), seeded(4)], **negative,
        ).images  # fmt: skip
    equal = [np.array_equal(mine, pixels(image)) for mine, image in zip(served, expected, strict=True)]
    assert equal == [True, True]


@pytest.mark.parametrize(("model", "sampler"), MODEL_SAMPLERS)
def test_image_to_image_equals_diffusers(client, flow_worker, plain, model, sampler):
    job, [served] = run(
        client, model=model, prompt=PROMPT, init_image=b64(INIT), image_strength=0.4, steps=10, seed=31,
        sampler=sampler,
    )  # fmt: skip
    assert job["request"]["task"] == "image-to-image"
    with scheduled(plain[model][1], sampler) as pipe:
        expected = pipe(
            PROMPT, image=INIT, strength=0.6, width=64, height=64, num_inference_steps=10,
            guidance_scale=job["request"]["cfg_scale"], generator=seeded(31),
        ).images[0]  # fmt: skip
    assert np.array_equal(served, pixels(expected))


@pytest.mark.parametrize(("model", "sampler"), MODEL_SAMPLERS)
def test_masking_equals_diffusers_inpainting_and_keeps_unmasked_pixels(
    client, flow_worker, plain, model, sampler
):
    job, [served] = run(
        client, model=model, prompt=PROMPT, init_image=b64(INIT), mask_source="MASK_IMAGE_WHITE",
        mask_image=b64(MASK), steps=10, seed=31, sampler=sampler,
    )  # fmt: skip
    with scheduled(plain[model][2], sampler) as pipe:
        generated = pipe(
            PROMPT, image=INIT, mask_image=MASK, width=64, height=64, strength=1.0, num_inference_steps=10,
            guidance_scale=job["request"]["cfg_scale"], generator=seeded(31),
        ).images[0]  # fmt: skip
    keep = np.asarray(MASK) == 0
    assert np.array_equal(served[keep], pixels(INIT)[keep])
    assert np.array_equal(served, pixels(Image.composite(generated, INIT, MASK)))


@pytest.mark.parametrize(
    ("model", "sampler", "runs"),
    [
        ("tiny-sd3", name, "K_EULER, K_HEUN")
        for name in ("K_DPMPP_2M_KARRAS", "K_EULER_ANCESTRAL", "DDIM", "LCM")
    ]
    + [("tiny-flux", name, "K_EULER") for name in ("K_HEUN", "K_DPMPP_2M", "UNIPC")],
)
def test_other_samplers_are_refused(client, model, sampler, runs):
    response = client.post("/v1/generate", json={"model": model, "prompt": PROMPT, "sampler": sampler})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["name"] == "invalid_sampler"
    assert error["message"].endswith(f"cannot run {sampler}; it runs: {runs}")


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"prompt": PROMPT, "negative_prompt": "fog"}, "invalid_negative_prompt"),
        (
            {"text_prompts": [{"text": PROMPT, "weight": 1}, {"text": "fog", "weight": -1}]},
            "invalid_text_prompts",
        ),
    ],
)
def test_flux_refuses_negative_prompts(client, body, name):
    response = client.post("/v1/generate", json={"model": "tiny-flux", **body})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["name"] == name and "takes no negative prompt" in error["message"]


def test_the_model_list_says_which_models_take_negative_prompts(client):
    listed = {
        model["id"]: model["takes_negative_prompt"] for model in client.get("/v1/models").json()["data"]
    }
    assert listed["tiny-flux"] is False
    assert listed["tiny-sd3"] is True and listed["tiny-sd"] is True


def test_flux_takes_a_style_without_its_negative_text(client, flow_worker):
    job, _ = run(client, model="tiny-flux", prompt=PROMPT, style_preset="photographic", steps=2)
    assert all(prompt["weight"] > 0 for prompt in job["request"]["prompts"])


@pytest.mark.parametrize("model", FLOW_MODELS)
def test_batched_jobs_keep_their_seeds_and_images(client, flow_worker, model):
    base = {"model": model, "width": 64, "height": 64, "steps": 6, "cfg_scale": 5.0}
    bodies = [
        {**base, "prompt": "a lighthouse", "seed": 70, "samples": 2},
        {
            **base,
            "text_prompts": [{"text": "a fox", "weight": 2}, {"text": "a hound", "weight": 1}],
            "seed": 90,
        },
    ]
    blocker, ids = queued_behind_blocker(
        client, {**base, "prompt": "a storm", "steps": 40, "seed": 1}, bodies
    )
    together = [wait_for_job(client, job_id) for job_id in ids]
    wait_for_job(client, blocker)
    assert [job["status"] for job in together] == ["succeeded"] * 2, together
    assert [job["batch_size"] for job in together] == [2, 2]
    for body, batched in zip(bodies, together, strict=True):
        alone, alone_pixels = run(client, **body)
        assert alone["batch_size"] == 1
        assert [image["seed"] for image in batched["images"]] == [image["seed"] for image in alone["images"]]
        served = run_pixels(batched)
        for mine, reference in zip(served, alone_pixels, strict=True):
            assert np.abs(mine - reference).max() <= TOLERANCE


def queued_behind_blocker(client, blocker: dict, bodies: list[dict]) -> tuple[str, list[str]]:
    """Submit ``blocker``, then ``bodies`` once it runs (so they wait together); return the ids."""
    blocker_id = client.post("/v1/generate", json=blocker).json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{blocker_id}").json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return blocker_id, [client.post("/v1/generate", json=body).json()["id"] for body in bodies]


def run_pixels(job: dict) -> list[np.ndarray]:
    from tests.integration.test_generate import download_image

    return [pixels(download_image(image["url"])) for image in job["images"]]


def test_sd3_without_t5_equals_diffusers_without_it(models_dir, flow_worker):
    from diffusers import StableDiffusion3Pipeline

    from latentq.contract import JobSpec, WeightedPrompt
    from worker.diffusion.flow import FlowPipeline

    warm = FlowPipeline.load(str(models_dir / "tiny-sd3"), "cpu", t5=False)
    assert warm.pipe.text_encoder_3 is None
    spec = JobSpec(
        job_id="j", model="tiny-sd3", prompts=[WeightedPrompt(text=PROMPT, weight=1.0)], width=64, height=64,
        steps=6, cfg_scale=5.0, samples=1, seed=8, sampler="K_EULER",
    )  # fmt: skip
    [image] = warm.generate(spec, {})
    reference = StableDiffusion3Pipeline.from_pretrained(
        models_dir / "tiny-sd3", text_encoder_3=None, tokenizer_3=None
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        PROMPT, width=64, height=64, num_inference_steps=6, guidance_scale=5.0, generator=seeded(8)
    ).images[0]
    assert np.array_equal(pixels(image), pixels(expected))
    with_t5 = FlowPipeline.load(str(models_dir / "tiny-sd3"), "cpu").generate(spec, {})[0]
    assert not np.array_equal(pixels(with_t5), pixels(image))
