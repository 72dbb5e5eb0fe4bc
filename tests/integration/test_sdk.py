"""The Python client (``latentq_client``) against the real test stack: submit, follow the event
stream, wait, save, cancel, errors, idempotency, image inputs, upscale, listing, models, webhooks."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from latentq_client import (
    AsyncClient,
    BadRequestError,
    Client,
    ConflictError,
    JobFailedError,
    NotFoundError,
    WaitTimeoutError,
    WebhookVerificationError,
    verify_webhook,
)
from tests.conftest import API_KEY
from tests.integration.webhook_harness import api_client, secret

#: A short tiny-sd job; a long one (150 steps at 128x128) runs for seconds, long enough to cancel.
SHORT = {"width": 64, "height": 64, "steps": 4, "sampler": "K_EULER"}
LONG = {"width": 128, "height": 128, "steps": 150}


@pytest.fixture
def sdk(api_url):
    with Client(api_url, API_KEY, timeout=30) as client:
        yield client


def png_bytes(
    width: int, height: int, color: tuple[int, int, int] = (200, 80, 40), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color if mode == "RGB" else 255).save(buffer, format="PNG")
    return buffer.getvalue()


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_generate_wait_and_save_write_pngs_of_the_size_with_the_seed(sdk, worker, tmp_path):
    job = sdk.generate("a lighthouse", seed=42, samples=2, **{**SHORT, "width": 72})
    assert job.status == "queued" and not job.done
    assert job.wait(60) is job and job.status == "succeeded"
    assert [image["seed"] for image in job.image_info] == [42, 43]  # image i uses seed + i
    paths = job.save(tmp_path / "out")
    assert [path.name for path in paths] == [f"{job.id}-0.png", f"{job.id}-1.png"]
    images = [Image.open(path) for path in paths]
    assert [(image.format, image.size) for image in images] == [("PNG", (72, 64))] * 2
    # The seed is honoured: the same request again gives the same pixels, another seed others.
    again = sdk.generate("a lighthouse", seed=42, samples=2, **{**SHORT, "width": 72}).images(60)
    assert [opened(data).tobytes() for data in again] == [image.tobytes() for image in images]
    assert images[0].tobytes() != images[1].tobytes()


def test_events_yield_progress_and_previews_then_one_terminal_event(sdk, worker):
    job = sdk.generate("a lighthouse", seed=3, preview=True, **{**SHORT, "steps": 10})
    events = list(job.events(timeout=60))
    names = [event.name for event in events]
    assert names[:2] == ["queued", "started"] and names[-1] == "succeeded"
    assert [event.terminal for event in events].count(True) == 1
    progress = [(event.step, event.total_steps) for event in events if event.name == "progress"]
    assert progress == [(step, 10) for step in range(1, 11)]  # test workers report every step
    previews = [event.preview_jpeg for event in events if event.name == "preview"]
    assert previews and all(jpeg is not None and jpeg[:2] == b"\xff\xd8" for jpeg in previews)
    assert job.status == "succeeded" and job.image_info[0]["url"]  # the terminal event's job


def test_a_long_job_times_out_the_wait_then_cancel_stops_it(sdk, worker):
    job = sdk.generate("a lighthouse", seed=5, **LONG)
    with pytest.raises(WaitTimeoutError):
        job.wait(timeout=0.5)
    assert not job.done  # the job goes on
    for event in job.events(timeout=60):
        if event.name == "progress" and event.step >= 3:
            break
    assert job.cancel().status == "canceled"
    assert job.wait(30).status == "canceled" and job.refresh().status == "canceled"
    with pytest.raises(JobFailedError) as raised:
        job.images()
    assert raised.value.name == "job_canceled"
    with pytest.raises(ConflictError) as again:
        sdk.jobs.cancel(job.id)
    assert again.value.name == "job_finished"


def test_bad_input_raises_a_typed_exception_with_the_error_name_and_field(sdk):
    with pytest.raises(BadRequestError) as raised:
        sdk.generate("a lighthouse", width=65, height=64)
    error = raised.value
    assert (error.name, error.field, error.status_code) == ("invalid_width", "width", 400)
    assert "multiple of 8" in error.message and error.details["errors"]
    with pytest.raises(NotFoundError) as missing:
        sdk.jobs.get("0b4f3c1e-0000-4000-8000-000000000000")
    assert missing.value.name == "not_found"


def test_the_async_client_generates_follows_and_fetches(api_url, worker):
    async def run():
        async with AsyncClient(api_url, API_KEY) as client:
            job = await client.generate("a lighthouse", seed=9, **SHORT)
            names = [event.name async for event in job.events(timeout=60)]
            assert (await job.wait()).status == "succeeded"
            second = await client.generate("a lighthouse", seed=9, **SHORT)
            await second.wait(60)
            listed = await client.jobs.list(status="succeeded", limit=5)
            return names, await job.images(), await second.images(), [j.id for j in listed], job.id

    names, [image], [same], listed, job_id = asyncio.run(run())
    assert names[0] == "queued" and "progress" in names and names[-1] == "succeeded"
    assert opened(image).size == (64, 64) and opened(image).tobytes() == opened(same).tobytes()
    assert job_id in listed


def test_an_idempotency_key_sent_again_answers_the_same_job(sdk, worker):
    first = sdk.generate("a lighthouse", idempotency_key="sdk-order-1", seed=11, **SHORT)
    again = sdk.generate("a lighthouse", idempotency_key="sdk-order-1", seed=11, **SHORT)
    assert again.id == first.id
    with pytest.raises(ConflictError) as conflict:
        sdk.generate("another prompt", idempotency_key="sdk-order-1", seed=11, **SHORT)
    assert conflict.value.name == "idempotency_conflict"
    assert first.wait(60).status == "succeeded"


def test_image_to_image_and_masking_take_bytes_or_paths(sdk, worker, tmp_path):
    init = tmp_path / "init.png"
    init.write_bytes(png_bytes(72, 64))
    redrawn = sdk.generate("a storm", init_image=init, image_strength=0.4, seed=2, steps=4).wait(60)
    assert redrawn.status == "succeeded", redrawn.error
    assert (redrawn.image_info[0]["width"], redrawn.image_info[0]["height"]) == (72, 64)
    assert redrawn.data["request"]["strength"] == pytest.approx(0.6)  # 1 - image_strength
    mask = png_bytes(72, 64, mode="L")
    masked = sdk.generate(
        "a red boat", init_image=init.read_bytes(), mask_image=mask, mask_source="MASK_IMAGE_WHITE", steps=4
    ).wait(60)
    assert masked.status == "succeeded", masked.error
    assert opened(masked.images()[0]).size == (72, 64)


def test_a_control_image_is_sent_from_a_path(sdk, worker, tmp_path):
    sketch = tmp_path / "sketch.png"
    sketch.write_bytes(png_bytes(80, 64))
    job = sdk.generate("a boat", control_image=sketch, control_strength=0.5, seed=2, steps=4).wait(60)
    assert job.status == "succeeded", job.error
    assert (job.data["request"]["control_model"], job.data["request"]["control_strength"]) == (
        "tiny-sd-scribble",
        0.5,
    )
    assert opened(job.images()[0]).size == (80, 64)


def test_upscale_saves_the_enlarged_image(sdk, image_worker, tmp_path):
    job = sdk.upscale(png_bytes(48, 32), model="lanczos", width=96)
    [path] = job.save(tmp_path)
    assert Image.open(path).size == (96, 64) and path.name == f"{job.id}-0.png"


def test_jobs_list_filters_by_status_and_pages(sdk, worker):
    done = sdk.generate("a lighthouse", seed=21, **SHORT).wait(60)
    succeeded = sdk.jobs.list(status="succeeded", limit=100)
    assert done.id in [job.id for job in succeeded] and all(job.status == "succeeded" for job in succeeded)
    first_page = sdk.jobs.list(limit=1)
    assert len(first_page) == 1 and first_page.next_cursor
    second_page = sdk.jobs.list(limit=1, cursor=first_page.next_cursor)
    assert second_page.jobs[0].id != first_page.jobs[0].id


def test_models_lists_the_registered_models_with_their_workers(sdk, worker):
    models = {model["id"]: model for model in sdk.models()}
    assert models["tiny-sd"]["workers"] >= 1 and "text-to-image" in models["tiny-sd"]["tasks"]


def test_verify_webhook_accepts_a_real_delivery_and_refuses_it_tampered(
    hook_api, receiver, dispatcher, worker
):
    with Client(hook_api, API_KEY) as client:
        job = client.generate("a lighthouse", seed=1, webhook_url=receiver.url("/sdk-hook"), **SHORT)
        assert job.wait(60).status == "succeeded"
    with api_client(hook_api) as plain:
        key_secret = secret(plain)
    [delivery] = receiver.wait("/sdk-hook", 1)
    event = verify_webhook(delivery["body"], delivery["headers"], key_secret)
    assert event["type"] == "job.completed" and event["data"]["id"] == job.id
    with pytest.raises(WebhookVerificationError):
        verify_webhook(delivery["body"].replace(b"succeeded", b"failed"), delivery["headers"], key_secret)
