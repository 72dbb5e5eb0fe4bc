"""Settings come from LATENTQ_* variables, with checked values."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from latentq.settings import ApiSettings, WorkerSettings


def test_api_keys_are_comma_separated(monkeypatch):
    monkeypatch.setenv("LATENTQ_API_KEYS", " key-a, key-b ,,")
    assert ApiSettings().api_keys == ("key-a", "key-b")


def test_worker_reads_its_settings(monkeypatch):
    monkeypatch.setenv("LATENTQ_WORKER_MODELS", "tiny-sd, tiny-sdxl")
    monkeypatch.setenv("LATENTQ_DEVICE", "cpu")
    monkeypatch.setenv("LATENTQ_WARMUP", "false")
    settings = WorkerSettings()
    assert (settings.worker_models, settings.device, settings.warmup) == (
        ("tiny-sd", "tiny-sdxl"),
        "cpu",
        False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("LATENTQ_MODELS", '[{"id": "has space", "source": "x", "family": "sd1"}]'),
     ("LATENTQ_MODELS", '[{"id": "../x", "source": "x", "family": "sd1"}]'),
     ("LATENTQ_MODELS", '[{"id": "x", "source": "x", "family": "sd4"}]'),
     ("LATENTQ_MODELS", "not json"), ("LATENTQ_S3_URL_EXPIRES_S", "0"),
     ("LATENTQ_S3_URL_EXPIRES_S", "604801"), ("LATENTQ_DEVICE", "tpu"),
     ("LATENTQ_PNG_COMPRESS_LEVEL", "10"), ("LATENTQ_PNG_COMPRESS_LEVEL", "-1")],
)  # fmt: skip
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, SettingsError)):
        WorkerSettings()


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        ApiSettings(api_keys=("k",)).api_keys = ()  # type: ignore[misc]


def test_api_refuses_to_start_without_keys():
    from api.app import create_app

    with pytest.raises(RuntimeError, match="LATENTQ_API_KEYS"):
        create_app(ApiSettings(api_keys=()))


def test_production_refuses_short_bootstrap_keys_and_takes_long_ones_or_none():
    from api.app import create_app

    with pytest.raises(RuntimeError, match="shorter than 32") as refused:
        create_app(ApiSettings(env="production", api_keys=("changeme", "x" * 40)))
    assert "changeme" not in str(refused.value)  # the key itself is never in a message
    create_app(ApiSettings(env="production", api_keys=("x" * 40,)))
    create_app(ApiSettings(env="production", api_keys=()))  # managed keys only


def test_the_rq_queue_key_we_guard_is_rqs_own():
    from rq import Queue

    from latentq.keys import queue_name, rq_queue_key

    assert rq_queue_key(queue_name("m")) == Queue(queue_name("m"), connection=object()).key  # type: ignore[arg-type]
