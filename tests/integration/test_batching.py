"""Cross-request batching through the real worker: jobs queued together sample in one pipeline
call, each gives the image it gives alone, and one job's failure or cancel leaves the others whole."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
from PIL import Image

from latentq.storage import ImageStore
from tests.conftest import api_settings, object_folder, wait_for_job

#: A job long enough (about a second here) that jobs submitted after it queue up behind it.
BLOCKER = {"prompt": "a storm", "width": 128, "height": 128, "steps": 100, "seed": 1}
BASE = {"width": 64, "height": 64, "steps": 20, "sampler": "K_EULER_ANCESTRAL", "cfg_scale": 6.0}
#: Batching changes float rounding (about 1e-6 on CPU fp32): a pixel may move by this many levels.
TOLERANCE = 2


def pixels(job: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(httpx.get(image["url"]).content)).convert("RGB"), dtype=int)
            for image in job["images"]]  # fmt: skip


def queued_behind_blocker(client: httpx.Client, bodies: list[dict]) -> tuple[str, list[str]]:
    """Submit the blocker, then ``bodies`` while it runs (so they wait together); return the ids."""
    blocker = client.post("/v1/generate", json=BLOCKER).json()["id"]
    deadline = time.monotonic() + 30
    while client.get(f"/v1/jobs/{blocker}").json()["status"] == "queued":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return blocker, [client.post("/v1/generate", json=body).json()["id"] for body in bodies]


BODIES = [
    {**BASE, "prompt": f"a lighthouse, style {index}", "seed": 500 + index, "samples": 1 + index % 2}
    for index in range(5)
] + [{**BASE, "text_prompts": [{"text": "a fox", "weight": 2}, {"text": "a hound", "weight": 1}], "seed": 7}]


def test_queued_jobs_sample_together_and_each_image_is_what_it_is_alone(client, worker):
    blocker, ids = queued_behind_blocker(client, BODIES)
    together = [wait_for_job(client, job_id) for job_id in ids]
    assert wait_for_job(client, blocker)["batch_size"] == 1
    assert all(job["status"] == "succeeded" for job in together), together
    assert {job["batch_size"] for job in together} == {len(BODIES)}  # 8 images: one pipeline call
    for body, batched in zip(BODIES, together, strict=True):
        alone = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
        assert alone["batch_size"] == 1
        assert [image["seed"] for image in alone["images"]] == [image["seed"] for image in batched["images"]]
        for mine, reference in zip(pixels(batched), pixels(alone), strict=True):
            difference = np.abs(mine - reference)
            assert difference.max() <= TOLERANCE and difference.mean() < 0.05, (difference.max(), body)


def test_different_sizes_and_samplers_in_one_round_run_as_separate_calls(client, worker):
    bodies = [{**BASE, "prompt": "a", "seed": 1}, {**BASE, "prompt": "b", "seed": 2, "width": 128},
              {**BASE, "prompt": "c", "seed": 3, "sampler": "DDIM"},
              {**BASE, "prompt": "d", "seed": 4}]  # fmt: skip
    _, ids = queued_behind_blocker(client, bodies)
    jobs = [wait_for_job(client, job_id) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 4
    assert [job["batch_size"] for job in jobs] == [2, 1, 1, 2]
    assert jobs[1]["images"][0]["width"] == 128


def test_a_failing_and_a_canceled_job_leave_their_batch_mates_whole(client, worker, redis_server, s3_server):
    init = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init, format="PNG")
    broken = {"prompt": "a barn", "init_image": base64.b64encode(init.getvalue()).decode(), "steps": 20}
    long_one = {**BASE, "prompt": "a long one", "seed": 9, "steps": 150}
    mates = [{**BASE, "prompt": f"mate {index}", "seed": 40 + index, "steps": 150} for index in range(3)]
    blocker, ids = queued_behind_blocker(client, [broken, long_one, *mates])
    # The broken job's input disappears from storage before a worker loads it: it alone fails.
    ImageStore(api_settings(redis_server, s3_server)).client.delete_object(
        Bucket="latentq-test", Key=f"{object_folder(client, ids[0])}/inputs/init.png"
    )
    deadline = time.monotonic() + 60
    while (job := client.get(f"/v1/jobs/{ids[1]}").json())["progress"] is None or job["progress"]["step"] < 5:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.01)
    step_at_cancel = client.post(f"/v1/jobs/{ids[1]}/cancel").json()["progress"]["step"]
    canceled = wait_for_job(client, ids[1])
    assert canceled["status"] == "canceled" and canceled["images"] == []
    assert canceled["progress"]["step"] - step_at_cancel <= 2  # released at its next step, batch or not
    failed = wait_for_job(client, ids[0])
    assert failed["status"] == "failed" and failed["error"]["name"] == "storage_error"
    finished = [wait_for_job(client, job_id) for job_id in ids[2:]]
    assert [job["status"] for job in finished] == ["succeeded"] * 3
    assert {job["batch_size"] for job in finished} == {4}  # sampled with the canceled one
    for body, batched in zip(mates, finished, strict=True):
        alone = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
        assert np.abs(pixels(batched)[0] - pixels(alone)[0]).max() <= TOLERANCE
    assert wait_for_job(client, blocker)["status"] == "succeeded"
