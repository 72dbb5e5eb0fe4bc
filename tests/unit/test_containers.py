"""Dockerfile, .dockerignore, docker-compose.yml and .env.example, checked statically (no Docker
engine runs here): hadolint passes, every file they copy, command they run, module they name and
endpoint their health checks ask for exists, and every variable compose reads is in .env.example."""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from latentq.settings import ApiSettings, CommonSettings, DispatcherSettings, WorkerSettings
from tests.conftest import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
WORKERS = ["worker-gpu0", "worker-gpu1"]


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
    return json.loads(re.search(rf"^{instruction} (\[.*\])$", stage, flags=re.MULTILINE).group(1))


def test_compose_services():
    services = COMPOSE["services"]
    assert set(services) == {"redis", "s3", "s3-bucket", "api", "webhooks", *WORKERS}
    assert services["api"]["build"]["target"] == "api"
    assert services["webhooks"]["build"]["target"] == "api"  # the dispatcher needs no torch
    assert services["webhooks"]["command"] == ["python", "-m", "dispatcher"]
    assert (REPO / "dispatcher" / "__main__.py").exists()
    for worker in WORKERS:
        assert services[worker]["build"]["target"] == "worker"
    assert services["s3"]["build"]["target"] == "s3"


def test_compose_publishes_only_s3_of_the_storage():
    s3 = COMPOSE["services"]["s3"]
    assert s3["ports"] == ["8333:8333"] and "expose" not in s3 and "network_mode" not in s3


def test_compose_api_runs_in_production():
    value = COMPOSE["services"]["api"]["environment"]["LATENTQ_ENV"]
    assert value == "production" and ApiSettings(env=value).env == value  # refuses short bootstrap keys


@pytest.mark.parametrize("service", ["s3", "s3-bucket", "api", "webhooks", *WORKERS])
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


def test_compose_runs_a_worker_per_gpu_each_with_its_own_models():
    devices, models = [], []
    for worker in WORKERS:
        [device] = COMPOSE["services"][worker]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "count" not in device  # one named GPU each, never all of them
        devices += device["device_ids"]
        models.append(COMPOSE["services"][worker]["environment"]["LATENTQ_WORKER_MODELS"])
    assert devices == [str(index) for index in range(len(WORKERS))]
    assert len(set(models)) == len(WORKERS) and all(re.fullmatch(r"\$\{GPU\d_MODELS:-\}", m) for m in models)
    # Only GPU 0 is there on every GPU host; the others are opt-in profiles.
    assert [w for w in WORKERS if "profiles" not in COMPOSE["services"][w]] == ["worker-gpu0"]


@pytest.mark.parametrize(
    ("service", "settings"),
    [
        ("api", ApiSettings),
        ("s3-bucket", CommonSettings),
        ("webhooks", DispatcherSettings),
        *((worker, WorkerSettings) for worker in WORKERS),
    ],
)
def test_compose_sets_only_real_settings(service, settings):
    names = set(COMPOSE["services"][service]["environment"])
    assert {name.removeprefix("LATENTQ_").lower() for name in names} <= set(settings.model_fields)


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


# The worker's and dispatcher's own HTTP listener (on LATENTQ_METRICS_PORT; issue 16's metrics
# work). Replace with that listener's route table once it is merged.
METRICS_LISTENER_PATHS = {"/metrics", "/livez", "/readyz"}


def api_paths() -> set[str]:
    """Return the API's health paths (its router of liveness and readiness)."""
    from api.routes.health import router

    return {route.path for route in router.routes}


def tool(name: str) -> str:
    """Return the path of ``name`` as the dev extra installs it (into this interpreter's bin)."""
    return str(Path(sys.executable).parent / name)


def test_hadolint_passes():
    # Each ignore in the Dockerfile sits on the instruction it is for, with its reason above it.
    result = subprocess.run([tool("hadolint"), "--no-color", "Dockerfile"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for match in re.finditer(r"^# hadolint ignore=(\S+)\n", DOCKERFILE, flags=re.MULTILINE):
        before = DOCKERFILE[: match.start()].splitlines()
        assert before[-1].startswith("# ") and not before[-1].startswith("# hadolint"), match.group(1)


@pytest.mark.parametrize("stage", ["api", "worker"])
def test_images_run_under_tini_as_a_user(stage):
    # A Python PID 1 ignores SIGTERM until it installs a handler: tini passes it on.
    assert json_command(stages()[stage], "ENTRYPOINT") == ["/usr/bin/tini", "--"]
    assert re.search(r"apt-get install -y --no-install-recommends [^\n]*\btini\b", stages()[stage])
    assert re.search(r"^USER 10001$", stages()[stage], flags=re.MULTILINE)


def healthcheck_url(stage: str) -> str:
    command = json_command(stages()[stage].replace("\\\n", ""), r"HEALTHCHECK .*CMD")
    return re.search(r"urlopen\('([^']+)'", command[-1]).group(1)


def test_image_health_checks_ask_for_endpoints_that_exist():
    api = re.fullmatch(r"http://127\.0\.0\.1:8000(/\w+)", healthcheck_url("api"))
    assert api and api.group(1) in api_paths()
    port = re.search(r"LATENTQ_METRICS_PORT=(\d+)", stages()["worker"]).group(1)
    worker = re.fullmatch(rf"http://127\.0\.0\.1:{port}(/\w+)", healthcheck_url("worker"))
    assert worker and worker.group(1) == "/livez" and worker.group(1) in METRICS_LISTENER_PATHS
    assert re.search(rf"^EXPOSE {port}$", stages()["worker"], flags=re.MULTILINE)
    assert healthcheck_url("s3") == "http://127.0.0.1:8333/healthz"  # SeaweedFS S3 answers it unsigned


def test_dockerignore_keeps_what_the_dockerfile_copies_and_nothing_local():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert lines[0] == "*"  # everything out, then the copied paths back in
    kept = {line.removeprefix("!").rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in stages().values():
        for line in re.findall(r"^COPY (.+)$", stage, flags=re.MULTILINE):
            copied |= set(shlex.split(line)[:-1])
    assert all(any(source == k or source.startswith(k + "/") for k in kept) for source in copied), copied
    assert not {".run", ".env", ".venv", "tests", "latentq_dev"} & kept


def compose_variables() -> set[str]:
    """Return every ``${NAME...}`` docker-compose.yml's values read (comments left out)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.update(re.findall(r"\$\{(\w+)", node))

    walk(COMPOSE)
    return found


def env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def test_env_example_names_every_variable_compose_reads():
    assert compose_variables() <= set(env_example())
    assert set(env_example()) - compose_variables() == {"COMPOSE_PROFILES"}  # compose's own


def test_env_example_has_no_working_secret():
    example = env_example()
    assert example["LATENTQ_API_KEYS"] == "" and example["LATENTQ_S3_SECRET_ACCESS_KEY"] == ""
    # Each secret is required where compose reads it: ${NAME:?message} stops on unset or empty.
    for name in ("LATENTQ_API_KEYS", "LATENTQ_S3_SECRET_ACCESS_KEY"):
        text = (REPO / "docker-compose.yml").read_text()
        assert re.findall(rf"\$\{{{name}\W", text) and not re.search(rf"\$\{{{name}(?!:\?)", text), name
    assert ".env" in (REPO / ".gitignore").read_text().splitlines()


def test_env_example_latentq_variables_are_real_settings():
    fields = (
        set(ApiSettings.model_fields)
        | set(WorkerSettings.model_fields)
        | set(DispatcherSettings.model_fields)
    )
    names = {name for name in env_example() if name.startswith("LATENTQ_")}
    assert {name.removeprefix("LATENTQ_").lower() for name in names} <= fields


def duration_s(text: str) -> float:
    """Return a compose duration (``12m``, ``90s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)([hms])", text))


@pytest.mark.parametrize("worker", WORKERS)
def test_compose_workers_drain_before_they_are_killed(worker):
    service = COMPOSE["services"][worker]
    drain_s = float(service["environment"]["LATENTQ_DRAIN_TIMEOUT_S"])
    job_timeout = re.fullmatch(
        r"\$\{LATENTQ_JOB_TIMEOUT_S:-(\d+)\}",
        COMPOSE["services"]["api"]["environment"]["LATENTQ_JOB_TIMEOUT_S"],
    )
    # The longest round (the API's job timeout) finishes with time for its uploads, and compose
    # waits for the drain before it sends SIGKILL.
    assert drain_s >= int(job_timeout.group(1)) + 30
    assert duration_s(service["stop_grace_period"]) > drain_s
    assert WorkerSettings(drain_timeout_s=drain_s).drain_timeout_s == drain_s


def test_compose_health_checks_ask_for_endpoints_that_exist():
    services = COMPOSE["services"]
    dispatcher = services["webhooks"]
    url = re.search(r"urlopen\('([^']+)'", dispatcher["healthcheck"]["test"][-1]).group(1)
    port = dispatcher["environment"]["LATENTQ_METRICS_PORT"]
    assert url == f"http://127.0.0.1:{port}/livez" and "/livez" in METRICS_LISTENER_PATHS
    assert services["s3"]["healthcheck"]["test"][-1].endswith(
        "urlopen('http://127.0.0.1:8333/healthz', timeout=2)"
    )
    assert services["api"]["depends_on"]["s3-bucket"] == {"condition": "service_completed_successfully"}
    assert services["s3-bucket"]["depends_on"]["s3"] == {"condition": "service_healthy"}


def test_compose_bucket_service_runs_real_code():
    command = COMPOSE["services"]["s3-bucket"]["command"]
    assert command[:2] == ["python", "-c"]
    compile(command[2], "s3-bucket", "exec")
    from latentq.storage import ImageStore

    assert callable(ImageStore.ensure_bucket) and "ImageStore(CommonSettings()).ensure_bucket()" in command[2]


def test_compose_api_scales_to_two_replicas_on_a_port_range():
    [ports] = COMPOSE["services"]["api"]["ports"]
    assert ports == "${API_PORTS:-8000-8001}:8000" and "container_name" not in COMPOSE["services"]["api"]
    first, last = env_example()["API_PORTS"].split("-")
    assert int(last) - int(first) + 1 >= 2


COMPOSE_SCHEMA = json.loads((REPO / "tests" / "unit" / "data" / "compose_spec.json").read_text())


def interpolate(node: object, variables: dict[str, str]) -> object:
    """Return ``node`` with compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}``
    replaced as ``docker compose config`` replaces them; a required one unset or empty raises."""
    if isinstance(node, dict):
        return {key: interpolate(value, variables) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, variables) for value in node]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = variables.get(name, "")
        if operator == ":?" and not value:
            raise ValueError(f"required variable {name} is missing a value: {argument}")
        return value if value or operator != ":-" else argument

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", replace, node)


def test_compose_file_is_valid_against_the_compose_specification():
    # What `docker compose config` checks, without Docker: the file against the specification's
    # schema, before and after interpolation with .env.example's values and the secrets set.
    import jsonschema

    validator = jsonschema.Draft7Validator(COMPOSE_SCHEMA)
    assert not [error.message for error in validator.iter_errors(COMPOSE)]
    variables = {**env_example(), "LATENTQ_API_KEYS": "k" * 32, "LATENTQ_S3_SECRET_ACCESS_KEY": "s" * 32}
    interpolated = interpolate(COMPOSE, variables)
    assert not [error.message for error in validator.iter_errors(interpolated)]
    assert interpolated["services"]["api"]["ports"] == ["8000-8001:8000"]
    assert list(validator.iter_errors({"services": {"api": {"image": "x", "restartt": "no"}}}))


@pytest.mark.parametrize("secret", ["LATENTQ_API_KEYS", "LATENTQ_S3_SECRET_ACCESS_KEY"])
def test_compose_refuses_to_start_with_env_examples_empty_secret(secret):
    variables = {**env_example(), "LATENTQ_API_KEYS": "k" * 32, "LATENTQ_S3_SECRET_ACCESS_KEY": "s" * 32}
    with pytest.raises(ValueError, match=secret):
        interpolate(COMPOSE, {**variables, secret: env_example()[secret]})


def test_worker_image_pins_the_tested_library_versions_and_can_compile():
    from importlib.metadata import version

    pins = re.search(r'^ARG WORKER_PINS="([^"]+)"', DOCKERFILE, flags=re.MULTILINE).group(1).split()
    assert {pin.split("==")[0] for pin in pins} >= {"diffusers", "transformers", "peft"}
    for pin in pins:
        name, _, pinned = pin.partition("==")
        assert version(name) == pinned, f"the image pins {pin}; the tests ran with {version(name)}"
    worker = DOCKERFILE.split("AS worker", 1)[1].split("\nFROM ", 1)[0]
    assert '".[worker]" ${WORKER_PINS}' in worker
    # Triton compiles a C module against Python's headers at run time; the caches need a home.
    assert all(package in worker for package in (" gcc ", " python3-dev ", " libc6-dev "))
    assert "HOME=/home/latentq" in worker and "--create-home --home-dir /home/latentq" in worker
    assert (
        "LATENTQ_COMPILE_CACHE_DIR=/cache/compile" in worker
        and "chown 10001 /models /cache/compile" in worker
    )
