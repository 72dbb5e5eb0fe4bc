"""What a job is admitted on besides its key's rate (``api.rate_limit``): its account's cap on
jobs at once, and its cost in credits (both checked in the submit's own script call,
``api.submit.enqueue_job``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from latentq.accounts import MILLI, Principal
from latentq.contract import JobSpec
from latentq.models import ModelRegistry, job_cost
from latentq.settings import ApiSettings

if TYPE_CHECKING:
    from api.services import Services


def job_cap(principal: Principal, settings: ApiSettings) -> int | None:
    """Return how many jobs ``principal``'s account may have queued and running at once: its own
    ``max_jobs``, else the settings'; None for a bootstrap key (not capped)."""
    if principal.bootstrap:
        return None
    return int(principal.limits.get("max_jobs") or settings.max_jobs_per_account)


def spec_cost(spec: JobSpec, registry: ModelRegistry) -> float:
    """Credits ``spec``'s job costs (``latentq.models.job_cost``)."""
    model = registry.get(spec.model)
    assert model is not None  # validated
    return job_cost(model, spec.width, spec.height, spec.steps, spec.samples, spec.task)


class Admission(NamedTuple):
    """What a job is admitted on (``submit_job``'s ``max_jobs`` and ``cost``)."""

    max_jobs: int | None
    #: Thousandths of a credit; None: free.
    cost: int | None


def admission(principal: Principal, services: Services, spec: JobSpec) -> Admission:
    """The terms ``submit_job`` admits ``spec``'s job for ``principal`` on: ``max_jobs``
    (``job_cap``) and ``cost`` in thousandths of a credit (None: an unlimited account's, or a
    bootstrap key's, job is free)."""
    unlimited = principal.bootstrap or principal.limits.get("unlimited") == "1"
    cost = None if unlimited else round(spec_cost(spec, services.registry) * MILLI)
    return Admission(job_cap(principal, services.settings), cost)
