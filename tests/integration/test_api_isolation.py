"""The API process never imports torch, diffusers, transformers or the worker package."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import API_KEY, BUCKET, REPO
from tests.integration.test_image_jobs import b64, noise_image

SCRIPT = f"""
import sys
from fastapi.testclient import TestClient
from api.app import create_app
from latentq.settings import ApiSettings

settings = ApiSettings(
    redis_url=sys.argv[1], s3_endpoint_url=sys.argv[2], s3_bucket="{BUCKET}",
    s3_access_key_id=sys.argv[3], s3_secret_access_key=sys.argv[4], api_keys=("{API_KEY}",),
)
headers = {{"Authorization": "Bearer {API_KEY}"}}
body = {{"prompt": "a", "width": 64, "height": 64, "steps": 1}}
with TestClient(create_app(settings)) as client:  # "with": start-up and shutdown run too
    job = client.post("/v1/generate", json=body, headers=headers)
    assert job.status_code == 202, job.text
    assert client.get("/v1/jobs/" + job.json()["id"], headers=headers).status_code == 200
    upscale = client.post("/v1/upscale", json={{"model": "lanczos", "image": sys.argv[5]}}, headers=headers)
    assert upscale.status_code == 202, upscale.text
    client.get("/readyz")
forbidden = ("torch", "diffusers", "transformers", "worker")
loaded = sorted(name for name in sys.modules if name.split(".")[0] in forbidden)
print(",".join(loaded))
"""


def test_api_never_imports_torch_or_the_worker(redis_server, s3_server):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, redis_server.url, s3_server.endpoint_url, s3_server.access_key,
         s3_server.secret_key, b64(noise_image(16, 16))],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
