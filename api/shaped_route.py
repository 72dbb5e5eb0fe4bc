"""Routes that answer every failure in another API's error shape (Stability's, OpenAI's), and the
synchronous submit those compatibility routes share: queue a job like any other, wait for it,
return its images."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from redis.exceptions import RedisError

from api.admission import admission
from api.body_parsing import validation_error
from api.deps import Caller
from api.submit import draft_job, submit_job
from latentq.contract import GenerateRequest, JobSpec, JobStatus, StoredImage, UpscaleRequest
from latentq.errors import LatentqError
from latentq.records import JobRecord

log = logging.getLogger("latentq.api")


class ShapedRoute(APIRoute):
    """A route whose every failure, authentication and validation included, is answered by
    ``render`` (a subclass's)."""

    render: Callable[[LatentqError], JSONResponse]

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        render = type(self).render

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LatentqError as error:
                return render(error)
            except RequestValidationError as error:
                return render(validation_error(error.errors()))
            except RedisError as error:
                log.error("redis unavailable: %s", error)
                return render(LatentqError("service_unavailable"))
            except Exception:
                log.exception("unhandled error")
                return render(
                    LatentqError("internal_error", "An unexpected server error occurred, please try again.")
                )

        return route


#: A change a route makes to a validated spec before it is queued.
Revision = Callable[[JobSpec], JobSpec]


async def wait_for_images(
    caller: Caller, ours: GenerateRequest | UpscaleRequest, revise: Revision | None = None
) -> list[StoredImage]:
    """Submit ``ours`` like any job (no webhooks; same queue, limits and credits), its spec changed
    by ``revise`` if given, wait for it up to ``LATENTQ_SYNC_TIMEOUT_S`` and return its images, or
    raise the error to answer with."""
    services = caller.services
    draft = await draft_job(services, caller.principal, ours, webhooks=False)
    if revise is not None:
        draft = dataclasses.replace(draft, spec=revise(draft.spec))
    with services.slots.holding(caller.owner):  # the answer is the image: no slot to wait in, no job
        timeout_s = services.settings.sync_timeout_s
        terms = admission(caller.principal, services, draft.spec)
        submitted = await submit_job(
            services, caller.owner, draft, wait_s=timeout_s, slot_held=True, max_jobs=terms.max_jobs,
            cost=terms.cost,
        )  # fmt: skip
    return finished_images(submitted.awaited, draft.spec.job_id, timeout_s)


def finished_images(record: JobRecord | None, job_id: str, waited_s: float) -> list[StoredImage]:
    """Return the images of the awaited job (its record after a wait of ``waited_s`` seconds); raise
    the error to answer with unless it succeeded."""
    if record is None:
        raise LatentqError("internal_error", f"Job {job_id} disappeared while it was awaited.")
    if record.status is JobStatus.SUCCEEDED:
        return record.images
    if record.status is JobStatus.FAILED and record.error:
        raise LatentqError(record.error.name, f"Job {job_id} failed: {record.error.message}")
    if record.status is JobStatus.CANCELED:  # through our API, while the answer waited for it
        raise LatentqError("job_canceled", f"Job {job_id} was canceled before it finished.")
    if not record.status.is_terminal:
        raise LatentqError(
            "timeout",
            f"Job {job_id} did not finish within {waited_s:g} s; it is still "
            f"{record.status.value}: follow it at GET /v1/jobs/{job_id}",
        )
    raise LatentqError("internal_error", f"Job {job_id} ended {record.status.value} without images.")
