"""The client's pure parts: the event-stream parser, request bodies, and webhook verification against
signatures made by the dispatcher's own signing code."""

from __future__ import annotations

import base64
import json
import time

import pytest

from dispatcher.signing import sign, signature_headers
from latentq.webhook_accounts import new_secret
from latentq_client import WebhookVerificationError, verify_webhook
from latentq_client._http import job_path
from latentq_client.events import EventParser
from latentq_client.submissions import generate_request


def parse(text: str) -> list:
    parser = EventParser()
    return [event for line in text.split("\n") if (event := parser.feed(line)) is not None]


def test_the_parser_reads_ids_names_and_json_data_and_skips_keep_alives():
    jpeg = base64.b64encode(b"\xff\xd8jpeg").decode()
    stream = (
        "id: 1-0\nevent: queued\ndata: {}\n\n: waiting\n\n"
        'id: 2-0\nevent: progress\ndata: {"step": 3, "total_steps": 20}\n\n'
        f'id: 3-0\nevent: preview\ndata: {{"step": 5, "jpeg": "{jpeg}"}}\n\n'
        'id: 4-0\nevent: succeeded\ndata: {"id": "j", "status": "succeeded"}\n\n'
    )
    events = parse(stream)
    assert [(event.id, event.name) for event in events] == [
        ("1-0", "queued"), ("2-0", "progress"), ("3-0", "preview"), ("4-0", "succeeded"),
    ]  # fmt: skip
    assert (events[1].step, events[1].total_steps) == (3, 20)
    assert events[2].preview_jpeg == b"\xff\xd8jpeg" and events[1].preview_jpeg is None
    assert [event.terminal for event in events] == [False, False, False, True]


def test_image_inputs_go_as_base64_from_bytes_or_a_path(tmp_path):
    (tmp_path / "init.png").write_bytes(b"init bytes")
    request = generate_request(
        "a boat", None, {"init_image": tmp_path / "init.png", "mask_image": b"mask", "image_strength": 0.4}
    )
    assert request.json == {
        "prompt": "a boat",
        "init_image": base64.b64encode(b"init bytes").decode(),
        "mask_image": base64.b64encode(b"mask").decode(),
        "image_strength": 0.4,
    }
    assert request.headers is not None and len(request.headers["Idempotency-Key"]) == 36


def test_verify_webhook_accepts_what_the_dispatcher_signs_and_refuses_tampering():
    secret, other = new_secret(), new_secret()
    body = json.dumps({"type": "job.completed", "data": {"id": "j", "status": "succeeded"}}).encode()
    # During a rotation the dispatcher signs with both secrets: either one verifies.
    headers = signature_headers([other, secret], "msg_j_completed", body)
    assert verify_webhook(body, headers, secret)["data"]["id"] == "j"
    assert verify_webhook(body.decode(), {k.title(): v for k, v in headers.items()}, other)["type"]
    with pytest.raises(WebhookVerificationError) as tampered:
        verify_webhook(body.replace(b"succeeded", b"failed"), headers, secret)
    assert tampered.value.name == "invalid_signature"
    with pytest.raises(WebhookVerificationError, match="invalid_signature"):
        verify_webhook(body, {**headers, "webhook-id": "msg_other"}, secret)
    with pytest.raises(WebhookVerificationError, match="invalid_signature"):
        verify_webhook(body, headers, new_secret())


def test_verify_webhook_refuses_old_timestamps_and_missing_headers():
    secret, body = new_secret(), b"{}"
    old = int(time.time()) - 600
    signature = sign(secret, "m", old, body)
    headers = {"webhook-id": "m", "webhook-timestamp": str(old), "webhook-signature": signature}
    with pytest.raises(WebhookVerificationError, match="invalid_timestamp"):
        verify_webhook(body, headers, secret)
    assert verify_webhook(body, headers, secret, now=old + 10) == {}
    with pytest.raises(WebhookVerificationError, match="missing_headers"):
        verify_webhook(body, {"webhook-id": "m"}, secret)


def test_verify_webhook_refuses_a_signed_body_that_is_no_json_object_and_foreign_digits():
    secret = new_secret()
    for body in (b"not json", b"[1, 2]"):
        headers = signature_headers([secret], "m", body)
        with pytest.raises(WebhookVerificationError, match="invalid_payload"):
            verify_webhook(body, headers, secret)
    body = b"{}"
    headers = signature_headers([secret], "m", body)
    arabic = "".join(chr(0x0660 + int(digit)) for digit in headers["webhook-timestamp"])  # int() takes them
    with pytest.raises(WebhookVerificationError, match="invalid_timestamp"):
        verify_webhook(body, {**headers, "webhook-timestamp": arabic}, secret)


def test_job_ids_are_escaped_in_paths():
    assert job_path("a/../b?c") == "/v1/jobs/a%2F..%2Fb%3Fc"
    assert job_path("0b4f", "cancel") == "/v1/jobs/0b4f/cancel"
