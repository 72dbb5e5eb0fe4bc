"""Answers that give nothing away and refuse malformed input by name: security headers on every
answer, ``Allow`` on a 405, a cursor or ``Last-Event-ID`` that cannot be one, ``/readyz`` text,
the local stack's S3 secret kept from other users, and its SeaweedFS reachable only through S3.

SeaweedFS's master checks no credentials: whoever reaches its port can have it sign volume writes
(``/dir/assign``) or drop a bucket's collection (``/col/delete``). Nothing local can stop a user of
the machine that reaches the loopback address, so no test pretends to: the master listens on
127.0.0.1 only (in compose, on the s3 container's loopback), and tenants' one way to make the
service send a request, webhooks, may not go to it (checked below)."""

from __future__ import annotations

import httpx
import pytest

from latentq.ssrf import UnsafeUrl, check_url
from latentq.storage import BUCKET_CORS
from latentq_dev.devrun import DEV_WEBHOOK_HOSTS
from latentq_dev.devstack import S3_CREDENTIALS_FILE
from tests.conftest import API_KEY, BUCKET, api_settings, serve


def test_every_answer_carries_the_security_headers(client):
    for response in (client.get("/healthz"), client.get("/v1/jobs/no-such-job"), client.get("/v1/models")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["cache-control"] == "no-store"  # URLs and secrets stay out of caches


def test_a_wrong_method_is_405_with_allow(client):
    response = client.put("/v1/generate", json={})
    assert response.status_code == 405 and response.json()["error"]["name"] == "method_not_allowed"
    assert "POST" in response.headers["allow"]


def test_a_cursor_that_is_not_a_number_is_refused_by_name(client):
    for cursor in ("nan", "inf", "soon"):
        response = client.get("/v1/jobs", params={"cursor": cursor})
        assert response.status_code == 400, (cursor, response.text)
        assert "cursor" in response.json()["error"]["field"]


def test_a_malformed_last_event_id_is_refused_by_name(client):
    job_id = client.post("/v1/generate", json={"prompt": "a", "width": 64, "height": 64, "steps": 1}).json()[
        "id"
    ]
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "not-an-id"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "Last-Event-ID"


def test_readyz_names_no_internal_host(redis_server, s3_server):
    with serve(api_settings(redis_server, s3_server, s3_secret_access_key="wrong")) as url:
        public = httpx.get(url + "/readyz").json()
        detailed = httpx.get(url + "/readyz", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert public["checks"]["s3"] == "unreachable" and "details" not in public
    assert detailed["details"]["s3"].startswith("unreachable: ")
    for answer in (public, detailed):
        assert "127.0.0.1" not in str(answer) and s3_server.endpoint_url not in str(answer)


def test_the_s3_identities_and_credentials_files_are_their_owners_only(s3_server):
    for name in ("s3.json", S3_CREDENTIALS_FILE):
        assert (s3_server.directory / name).stat().st_mode & 0o077 == 0, name
    assert s3_server.secret_key in (s3_server.directory / S3_CREDENTIALS_FILE).read_text()


def preflight(url: str, origin: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    return httpx.options(f"{url}/v1/generate", headers=headers)


def test_the_s3_servers_filer_takes_nothing_s3_did_not_sign_and_s3_allows_no_origin(s3_server):
    client = s3_server.client()
    client.put_object(Bucket=BUCKET, Key="hardening/0.png", Body=b"a tenant's image")
    filer = f"http://127.0.0.1:{s3_server.filer_port}/buckets/{BUCKET}"
    for method, path in (("GET", "/"), ("GET", "/hardening/0.png"), ("PUT", "/planted.png"),
                         ("DELETE", "/hardening/0.png")):  # fmt: skip
        answer = httpx.request(method, filer + path, content=b"x" if method == "PUT" else None)
        assert answer.status_code == 401, (method, path, answer.status_code)
    assert client.get_object(Bucket=BUCKET, Key="hardening/0.png")["Body"].read() == b"a tenant's image"
    assert_s3_allows_no_origin(s3_server, BUCKET, "hardening/0.png")


def assert_s3_allows_no_origin(s3_server, bucket: str, key: str) -> None:
    """Assert that S3 lets no page of another origin read ``key``: preflight and presigned GET."""
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    preflight = httpx.options(f"{s3_server.endpoint_url}/{bucket}/{key}", headers=origin)
    assert "access-control-allow-origin" not in preflight.headers
    fetched = httpx.get(s3_server.store(bucket).url(key), headers={"Origin": "https://evil.example"})
    assert fetched.status_code == 200 and "access-control-allow-origin" not in fetched.headers


def test_a_bucket_ensure_bucket_creates_allows_no_cors_origin(s3_server):
    store = s3_server.store("latentq-test-fresh")
    store.ensure_bucket()
    [rule] = store.client.get_bucket_cors(Bucket=store.bucket)["CORSRules"]
    assert rule["AllowedOrigins"] == BUCKET_CORS["CORSRules"][0]["AllowedOrigins"]
    store.put("0.png", b"an image", "image/png")
    assert_s3_allows_no_origin(s3_server, store.bucket, "0.png")
    store.delete(["0.png"])
    store.client.delete_bucket(Bucket=store.bucket)


def test_the_s3_servers_volume_takes_nothing_the_master_did_not_sign(s3_server):
    assigned = httpx.get(f"http://127.0.0.1:{s3_server.master_port}/dir/assign").json()
    volume = f"http://127.0.0.1:{s3_server.volume_port}/{assigned['fid']}"
    assert httpx.post(volume, files={"file": b"planted"}).status_code == 401
    assert httpx.get(volume).status_code == 401


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_webhooks_of_make_runs_stack_reach_no_seaweedfs_port(s3_server, host):
    ports = (s3_server.master_port, s3_server.volume_port, s3_server.filer_port, s3_server.s3_port)
    for port in ports:
        for path in ("/dir/assign", "/col/delete?collection=" + BUCKET, "/"):
            with pytest.raises(UnsafeUrl):
                check_url(f"http://{host}:{port}{path}", tuple(DEV_WEBHOOK_HOSTS.split(",")))


def test_cors_is_off_unless_origins_are_allowed_and_then_only_for_them(client, redis_server, s3_server):
    assert "access-control-allow-origin" not in preflight(str(client.base_url), "https://app.example").headers
    settings = api_settings(redis_server, s3_server, cors_origins=("https://app.example",))
    with serve(settings) as url:
        allowed = preflight(url, "https://app.example")
        assert (
            allowed.status_code == 200
            and allowed.headers["access-control-allow-origin"] == "https://app.example"
        )
        assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-origin" not in preflight(url, "https://evil.example").headers
        # An answer to the allowed origin (an error too) is readable by its page, with its limits.
        refused = httpx.get(f"{url}/v1/jobs", headers={"Origin": "https://app.example"})
        assert (
            refused.status_code == 401
            and refused.headers["access-control-allow-origin"] == "https://app.example"
        )
        assert "retry-after" in refused.headers["access-control-expose-headers"].lower()


def test_a_deeply_nested_body_is_a_named_400(client):
    body = '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}"
    answer = client.post("/v1/generate", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]["name"] == "invalid_json"
    assert "recursion" in answer.json()["error"]["message"]


def test_the_local_s3_takes_writes_to_several_new_buckets(s3_server):
    # Each bucket takes 7 volume slots at its first write: SeaweedFS's default 8 left the second
    # one none, and its first PutObject failed (InternalError) whenever another bucket came first.
    stores = [s3_server.store(f"latentq-test-slots-{index}") for index in range(3)]
    for store in stores:
        store.ensure_bucket()
        store.put("0.png", b"an image", "image/png")
        assert store.get("0.png") == b"an image"
    for store in stores:
        store.delete(["0.png"])
        store.client.delete_bucket(Bucket=store.bucket)
