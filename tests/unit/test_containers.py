"""Dockerfile and docker-compose.yml, checked statically (no Docker engine runs here):
every file they copy, command they run and module they name exists."""

from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
import zipfile

import pytest
import yaml

from latentq.settings import ApiSettings, DispatcherSettings, WorkerSettings
from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def stages() -> dict[str, str]:
    """Return each build stage's text by its name."""
    parts = re.split(r"^FROM .* AS (\w+)\s*$", DOCKERFILE, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_three_targets():
    assert set(stages()) == {"api", "worker", "s3"}
    assert "nvidia/cuda" in re.search(r"ARG CUDA_IMAGE=(\S+)", DOCKERFILE).group(1)


@pytest.mark.parametrize("stage", ["api", "worker", "s3"])
def test_copied_paths_exist(stage):
    for line in re.findall(r"^COPY (.+)$", stages()[stage], flags=re.MULTILINE):
        for source in shlex.split(line)[:-1]:
            assert (REPO / source).exists(), source


def test_api_image_installs_no_worker_code_or_torch():
    api = stages()["api"]
    assert "COPY worker" not in api and "torch" not in api.replace("never imports torch", "")
    assert "COPY dispatcher" in api and "COPY latentq_dev" not in api  # tooling ships in no image
    assert re.search(r"pip install \.(\s|$)", api)


def test_api_command_names_a_real_app_factory():
    command = json_command(stages()["api"], "CMD")
    assert command[0] == "uvicorn" and "--factory" in command
    module, attribute = command[1].split(":")
    assert callable(getattr(importlib.import_module(module), attribute))


def test_worker_command_runs_the_worker_module():
    assert json_command(stages()["worker"], "CMD") == ["python", "-m", "worker"]
    assert (REPO / "worker" / "__main__.py").exists()
    assert "python -m worker.embedded" in stages()["worker"]


S3_ENTRYPOINT = REPO / "deploy" / "docker" / "s3-entrypoint.sh"


def test_s3_entrypoint_is_executable_and_configures_signatures():
    assert os.access(S3_ENTRYPOINT, os.X_OK)
    assert "-s3.config=" in S3_ENTRYPOINT.read_text()


def test_s3_entrypoint_signs_with_random_keys_of_its_run():
    # S3's gRPC port listens beside 8333 (no flag binds it elsewhere): these keys are what make it
    # refuse identity changes and deletions from the compose network.
    script = S3_ENTRYPOINT.read_text()
    for name in ("SIGNING", "SIGNING_READ", "FILER_SIGNING", "FILER_SIGNING_READ"):
        assert f"WEED_JWT_{name}_KEY=$(head -c 32 /dev/urandom" in script, name
        assert re.search(rf"^export .*\bWEED_JWT_{name}_KEY\b", script, flags=re.MULTILINE), name


def weed_server_flags() -> dict[str, str]:
    """Return the flags of the entrypoint's ``weed server`` command, by name (``-filer``: '')."""
    script = S3_ENTRYPOINT.read_text().replace("\\\n", " ")
    [command] = [line for line in script.splitlines() if line.startswith("exec weed server ")]
    flags = [word.removeprefix("-").partition("=") for word in shlex.split(command)[3:]]
    return {name: value for name, _, value in flags}


def test_s3_entrypoint_binds_only_s3_beyond_the_containers_loopback():
    flags = weed_server_flags()
    assert flags["ip"] == flags["ip.bind"] == "127.0.0.1"  # master, volume and filer
    assert flags["s3.ip.bind"] == "0.0.0.0"
    binds = {name: value for name, value in flags.items() if name.endswith(("ip.bind", "Ip"))}
    assert binds == {"ip.bind": "127.0.0.1", "s3.ip.bind": "0.0.0.0"}
    # No other server beside them (each would listen on the container's ports too).
    assert not {"webdav", "sftp", "iam", "mq.broker", "mq.agent", "metricsPort"} & set(flags)
    assert flags["s3.port.iceberg"] == flags["s3.port.lance"] == "0"


def json_command(stage: str, instruction: str) -> list[str]:
    import json

    return json.loads(re.search(rf"^{instruction} (\[.*\])$", stage, flags=re.MULTILINE).group(1))


def test_compose_services():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "s3", "api", "worker", "webhooks"}
    assert services["api"]["build"]["target"] == "api"
    assert services["webhooks"]["build"]["target"] == "api"  # the dispatcher needs no torch
    assert services["webhooks"]["command"] == ["python", "-m", "dispatcher"]
    assert (REPO / "dispatcher" / "__main__.py").exists()
    assert services["worker"]["build"]["target"] == "worker"
    assert services["s3"]["build"]["target"] == "s3"


def test_compose_publishes_only_s3_of_the_storage():
    s3 = COMPOSE["services"]["s3"]
    assert s3["ports"] == ["8333:8333"] and "expose" not in s3 and "network_mode" not in s3


def test_compose_api_runs_in_production():
    value = COMPOSE["services"]["api"]["environment"]["LATENTQ_ENV"]
    assert value == "production" and ApiSettings(env=value).env == value  # refuses short bootstrap keys


@pytest.mark.parametrize("service", ["s3", "api", "webhooks", "worker"])
def test_compose_refuses_to_start_without_the_s3_secret(service):
    value = COMPOSE["services"][service]["environment"]["LATENTQ_S3_SECRET_ACCESS_KEY"]
    # ${NAME:?message}: compose stops with the message when NAME is unset or empty.
    assert re.fullmatch(r"\$\{LATENTQ_S3_SECRET_ACCESS_KEY:\?[^}]+\}", value), value
    assert ': "${LATENTQ_S3_SECRET_ACCESS_KEY:?' in S3_ENTRYPOINT.read_text()


def test_compose_redis_keeps_jobs():
    command = COMPOSE["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_compose_worker_reserves_a_gpu():
    [device] = COMPOSE["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


@pytest.mark.parametrize(
    ("service", "settings"),
    [("api", ApiSettings), ("worker", WorkerSettings), ("webhooks", DispatcherSettings)],
)
def test_compose_sets_only_real_settings(service, settings):
    names = {name.removeprefix("LATENTQ_").lower() for name in COMPOSE["services"][service]["environment"]}
    assert names <= set(settings.model_fields)


def test_example_registry_parses_and_uses_stabilitys_engine_ids():
    from latentq.models import build_registry

    registry = build_registry(REPO / "deploy" / "models.example.toml", (), None)
    assert {"stable-diffusion-v1-5", "stable-diffusion-xl-1024-v1-0"} <= set(registry.ids())
    assert registry.get("stable-diffusion-768-v2-1").limits.min_pixels == 589_824


def test_the_api_images_package_ships_the_pages_and_data_files(tmp_path):
    # The api image is `pip install .`: its wheel must hold what the package reads at run time.
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(tmp_path), str(REPO)], check=True, capture_output=True, timeout=120)
    (wheel,) = tmp_path.glob("latentq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    playground = {f"api/playground/{path.name}" for path in (REPO / "api" / "playground").iterdir()}
    assert playground and playground <= names
    assert {"api/style_presets.json", "latentq/models.toml"} <= names
    assert not any(name.startswith(("latentq_dev/", "tests/", "clients/")) for name in names)
