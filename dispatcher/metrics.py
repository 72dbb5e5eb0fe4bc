"""The dispatcher's Prometheus metrics, served on ``LATENTQ_METRICS_PORT`` (``latentq.probes``):
webhook deliveries by event and outcome, and how long each POST took."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from latentq.metrics import HTTP_BUCKETS, new_registry

#: The dispatcher process's metrics.
REGISTRY = new_registry()

#: The events counted by name; any other is counted as ``other``.
EVENTS = frozenset({"started", "progress", "completed"})

DELIVERIES = Counter(
    "latentq_webhook_deliveries",
    "Webhook delivery attempts by event and outcome (delivered, retrying, failed, disabled, refused, "
    "dropped, expired).",
    ["event", "outcome"],
    registry=REGISTRY,
)
POST_DURATION = Histogram(
    "latentq_webhook_post_duration_seconds",
    "Seconds a webhook POST took, to the receiver's answer or the failure.",
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)


def note_delivery(event: str, outcome: str) -> None:
    """Count a delivery attempt of ``event`` that ended ``outcome`` (a delivery state)."""
    DELIVERIES.labels(event if event in EVENTS else "other", outcome).inc()
