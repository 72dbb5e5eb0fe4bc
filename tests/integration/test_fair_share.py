"""Fair share between accounts, against real Redis and a real API: RQ's queue holds at most the
fair-share depth, topped up round robin across the accounts with jobs waiting, so a light
account's job goes ahead of a heavy account's backlog; positions, cancels and the depth cap count
the jobs held back."""

from __future__ import annotations

import httpx
from redis import Redis

from latentq.fair_share import pending_key, refill
from latentq.keys import queue_name, rq_queue_key
from tests.conftest import API_KEY, api_settings, serve

MODEL = {
    "id": "fair-sd",
    "source": "embedded:tiny-sd",
    "family": "sd1",
    "limits": {"min_side": 64, "min_pixels": 4096},
}
JOB = {"model": "fair-sd", "prompt": "a", "width": 64, "height": 64, "steps": 1}
HEAVY, LIGHT = {"Authorization": f"Bearer {API_KEY}"}, {"Authorization": "Bearer test-key-2"}


def test_a_light_accounts_job_goes_ahead_of_a_heavy_backlog(redis_server, s3_server):
    redis = Redis.from_url(redis_server.url)
    queue = queue_name("fair-sd")
    settings = api_settings(redis_server, s3_server, models=[MODEL], fair_queue_depth=2, max_queue_depth=11)
    with serve(settings) as url:
        first = httpx.post(f"{url}/v1/generate", json=JOB, headers=HEAVY)
        assert first.status_code == 202, first.text
        heavy = [
            first.json()["id"],
            *(httpx.post(f"{url}/v1/generate", json=JOB, headers=HEAVY).json()["id"] for _ in range(9)),
        ]
        assert [job_id.decode() for job_id in redis.lrange(rq_queue_key(queue), 0, -1)] == heavy[:2]
        assert int(redis.get(pending_key(queue))) == 8  # held back in the heavy account's turn
        light = httpx.post(f"{url}/v1/generate", json=JOB, headers=LIGHT).json()["id"]
        # Two in RQ's queue, then the light account's turn comes after one more heavy job at most.
        assert httpx.get(f"{url}/v1/jobs/{light}", headers=LIGHT).json()["queue_position"] == 3
        assert httpx.get(f"{url}/v1/jobs/{heavy[4]}", headers=HEAVY).json()["queue_position"] == 2 + 2 * 2
        # The depth cap counts the held jobs: 2 queued + 9 held = 11.
        full = httpx.post(f"{url}/v1/generate", json=JOB, headers=LIGHT)
        assert full.status_code == 503 and full.json()["error"]["name"] == "queue_full"
        # A worker takes the two queued jobs and tops the queue up: one job per account in turn.
        redis.delete(rq_queue_key(queue))
        refill(redis, queue, 2)
        assert [job_id.decode() for job_id in redis.lrange(rq_queue_key(queue), 0, -1)] == [heavy[2], light]
        assert httpx.get(f"{url}/v1/jobs/{light}", headers=LIGHT).json()["queue_position"] == 1
        # A held job canceled leaves its account's turn; the rest keep their order.
        canceled = httpx.post(f"{url}/v1/jobs/{heavy[3]}/cancel", headers=HEAVY).json()
        assert canceled["status"] == "canceled" and int(redis.get(pending_key(queue))) == 6
        redis.delete(rq_queue_key(queue))
        refill(redis, queue, 2)
        assert [job_id.decode() for job_id in redis.lrange(rq_queue_key(queue), 0, -1)] == heavy[4:6]
        # A queued job canceled gives its place to the next turn at once (no worker needed).
        assert httpx.post(f"{url}/v1/jobs/{heavy[4]}/cancel", headers=HEAVY).json()["status"] == "canceled"
        assert [job_id.decode() for job_id in redis.lrange(rq_queue_key(queue), 0, -1)] == [
            heavy[5],
            heavy[6],
        ]
