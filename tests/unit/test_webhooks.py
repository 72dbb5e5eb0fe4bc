"""The SSRF guard, Standard Webhooks signatures and a request's webhook resolution, without services."""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import ip_address

import pytest
from standardwebhooks import Webhook

from api.webhook_targets import webhook_target
from dispatcher.signing import sign
from latentq.contract import WebhookTarget
from latentq.deliveries import message_id
from latentq.errors import LatentqError
from latentq.settings import DispatcherSettings
from latentq.ssrf import Target, UnsafeUrl, address_refusal, check_url, literal_address, resolve
from latentq.webhook_accounts import new_secret

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "10.2.3.4": "private",
    "172.16.9.9": "private",
    "192.168.0.1": "private",
    "169.254.169.254": "metadata",
    "169.254.10.10": "link-local",
    "168.63.129.16": "metadata",  # Azure's wire server: a public address, refused by name
    "100.64.0.1": "carrier-grade NAT",
    "100.127.255.254": "carrier-grade NAT",
    "224.0.0.251": "multicast",
    "0.0.0.0": "unspecified",
    "198.18.0.1": "private",
    "240.0.0.1": "private",
    "::1": "loopback",
    "::": "unspecified",
    "fe80::1": "link-local",
    "fc00::1": "private",
    "fd00:ec2::254": "metadata",
    "ff02::1": "multicast",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:10.0.0.1": "private",
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe": "metadata",  # NAT64 of 169.254.169.254
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "loopback",  # Teredo, client 127.0.0.1
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_with_the_reason(address):
    reason = address_refusal(ip_address(address))
    assert reason is not None and REFUSED[address] in reason, reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert address_refusal(ip_address(address)) is None


@pytest.mark.parametrize(
    ("host", "address"),
    [("2130706433", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0x7f.1", "127.0.0.1"),
     ("127.1", "127.0.0.1"), ("0x0a000001", "10.0.0.1"), ("::ffff:7f00:1", "::ffff:7f00:1"),
     ("example.com", None), ("cafe", None), ("1.2.3.4.nip.io", None)],
)  # fmt: skip
def test_numeric_hosts_are_read_in_every_form_resolvers_accept(host, address):
    found = literal_address(host)
    assert (str(found) if found else None) == address


@pytest.mark.parametrize(
    "url",
    ["gopher://example.com/", "file:///etc/passwd", "http://u:p@example.com/", "http://example.com:99999/",
     "http://exa mple.com/", "http://example.com/\r\nX: 1", "https://", "http://localhost/", "http://a.localhost/",
     "http://[::1]:80/", "http://2130706433/", "https://" + "a" * 2100 + ".com/"],
)  # fmt: skip
def test_check_url_refuses(url):
    with pytest.raises(UnsafeUrl):
        check_url(url)


def test_check_url_accepts_public_names_and_allow_listed_hosts():
    check_url("https://hooks.example.com/latentq?token=abc")
    check_url("http://EXAMPLE.com.:8080")
    check_url("https://bücher.example/hook")  # IDNA
    check_url("http://127.0.0.1:9000/hook", ("127.0.0.1",))
    check_url("http://LocalHost/hook", ("localhost",))
    with pytest.raises(UnsafeUrl):  # the allow-list names hosts as written, not what they resolve to
        check_url("http://2130706433/hook", ("127.0.0.1",))


def test_an_allow_list_entry_with_a_port_allows_that_port_only():
    allowed = ("127.0.0.1:9000", "[::1]:9000", "localhost:9000")
    for url in ("http://127.0.0.1:9000/hook", "http://[::1]:9000/", "http://localhost:9000/x"):
        check_url(url, allowed)
    for url in (
        "http://127.0.0.1:6379/",
        "http://127.0.0.1/",
        "http://[::1]:8333/",
        "https://localhost/",
    ):
        with pytest.raises(UnsafeUrl):  # Redis', S3's, the default ports: not the receiver's
            check_url(url, allowed)


def test_resolve_checks_every_address_and_keeps_them_for_the_connection():
    with pytest.raises(UnsafeUrl, match=r"resolves to 127\.0\.0\.1, a loopback address"):
        resolve("http://localhost:8080/x")
    target = resolve("http://localhost:8080/x?y=1", ("localhost",))
    assert target.host == "localhost" and target.port == 8080 and target.path == "/x?y=1"
    assert "127.0.0.1" in target.addresses and target.host_header == "localhost:8080"
    assert Target("https", "::1", 443, "/", ("::1",)).host_header == "[::1]"


def test_signature_verifies_with_the_standardwebhooks_library():
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"job.completed","data":{}}'
    timestamp = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp),
               "webhook-signature": sign(secret, "msg_1", timestamp, body)}  # fmt: skip
    assert Webhook(secret).verify(body, headers) == {"type": "job.completed", "data": {}}
    tampered = {**headers, "webhook-id": "msg_2"}
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(body, tampered)


def test_signature_matches_the_spec_test_vector():
    # From the Standard Webhooks specification's examples.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_message_ids_are_stable_per_event():
    assert message_id("j", "completed") == message_id("j", "completed") == "msg_j_completed"
    assert message_id("j", "progress", 7) == "msg_j_progress_7"


def test_request_webhook_resolution():
    default = WebhookTarget(url="https://default.example/h", events=["started", "completed"])
    assert webhook_target(None, None, None, ()) is None
    assert webhook_target(None, None, default, ()) == default
    assert webhook_target(None, ["progress"], default, ()).events == ["progress"]
    own = webhook_target("https://own.example/h", ["completed", "started", "completed"], default, ())
    assert own == WebhookTarget(url="https://own.example/h", events=["started", "completed"])
    assert webhook_target("https://own.example/h", None, default, ()).events == ["completed"]
    with pytest.raises(LatentqError) as orphan:
        webhook_target(None, ["completed"], None, ())
    assert orphan.value.name == "invalid_webhook_events"
    with pytest.raises(LatentqError) as unsafe:
        webhook_target("http://169.254.169.254/", None, None, ())
    assert unsafe.value.name == "invalid_webhook_url" and unsafe.value.details["field"] == "webhook_url"


def test_retry_schedule_setting(monkeypatch):
    assert len(DispatcherSettings().webhook_retry_schedule_s) + 1 >= 6  # at least 6 attempts
    assert sum(DispatcherSettings().webhook_retry_schedule_s) >= 3600  # over hours
    monkeypatch.setenv("LATENTQ_WEBHOOK_RETRY_SCHEDULE_S", "1, 5,30")
    assert DispatcherSettings().webhook_retry_schedule_s == (1, 5, 30)
    monkeypatch.setenv("LATENTQ_WEBHOOK_RETRY_SCHEDULE_S", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        DispatcherSettings()
