"""The Grafana dashboard (deploy/grafana/latentq.json) is valid JSON, and every metric its panels
query is one the code defines: a renamed metric fails here, not as an empty panel in production."""

from __future__ import annotations

import json
import re

import pytest
from prometheus_client.core import Metric
from prometheus_client.metrics import MetricWrapperBase

import api.metrics
import dispatcher.metrics
import worker.metrics
from latentq.metrics import QueueStats
from tests.conftest import REPO
from worker.metrics import GpuMemory

DASHBOARD = REPO / "deploy" / "grafana" / "latentq.json"
#: The sample names each metric type exposes, from its family's name.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
    "gauge": ("",),
    "info": ("_info",),
}
#: The labels Prometheus adds to every series it scrapes, and a histogram's bucket label.
TARGET_LABELS = {"instance", "job", "le"}


def metric_families() -> list[Metric]:
    """The metric families the API, worker and dispatcher define: each module's metric objects and the
    custom collectors' descriptions (no service needed)."""
    found: list[Metric] = []
    for module in (api.metrics, worker.metrics, dispatcher.metrics):
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                family = value.describe()[0]
                family.label_names = value._labelnames  # no public way to read them
                found.append(family)
    for collector in (QueueStats(None, []), GpuMemory()):  # type: ignore[arg-type]
        for family in collector.describe():
            family.label_names = family._labelnames
            found.append(family)
    return found


def defined_metrics() -> dict[str, set[str]]:
    """Every sample name those metrics expose (``_total``, ``_bucket``, ...), with its labels."""
    return {
        family.name + suffix: set(family.label_names)
        for family in metric_families()
        for suffix in SUFFIXES[family.type]
    }


def expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        found += [target["expr"] for target in panel.get("targets", [])]
    found += [
        variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    return found


def test_the_dashboard_is_valid_json_with_panels_that_query_prometheus():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "latentq" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_the_defined_metrics_are_read_from_the_code():
    defined = defined_metrics()
    # The two names the Kubernetes manifests rely on, and one of each type.
    assert {"latentq_queue_depth", "latentq_worker_jobs_running"} <= set(defined)
    assert {"latentq_jobs_finished_total", "latentq_job_sampling_seconds_bucket"} <= set(defined)
    assert "latentq_gpu_memory_peak_bytes" in defined
    served = {
        sample.name
        for registry in (api.metrics.REGISTRY, worker.metrics.REGISTRY, dispatcher.metrics.REGISTRY)
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("latentq_")
    }
    assert served <= set(defined)  # every metric the registries serve was found


@pytest.mark.parametrize("expression", expressions())
def test_every_metric_a_panel_queries_is_defined(expression):
    defined = defined_metrics()
    used = set(re.findall(r"\blatentq_[a-z0-9_]+\b", expression))
    assert used, f"queries no latentq metric: {expression}"
    assert used <= set(defined), f"undefined: {sorted(used - set(defined))} in {expression}"
    # A label the panel selects or groups by is one those metrics have (or Prometheus adds).
    labels = set(re.findall(r"\b(?:by|without) \(([^)]*)\)", expression))
    labels = {name.strip() for group in labels for name in group.split(",")}
    labels |= set(re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!~|!=|=)", expression))
    known = set().union(*(defined[name] for name in used)) | TARGET_LABELS
    assert labels <= known, f"unknown labels {sorted(labels - known)} in {expression}"
