"""The exceptions the client raises: one per HTTP status family, each carrying the API's error name."""

from __future__ import annotations

from typing import Any


class LatentqError(Exception):
    """An error of the latentq API or client: ``name`` is the API's error name (e.g. ``invalid_width``)."""

    def __init__(
        self,
        name: str,
        message: str,
        *,
        status_code: int | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message
        self.status_code = status_code
        self.field = field
        #: The whole ``error`` object of the answer (e.g. ``errors``, ``cost``, ``credits``).
        self.details = details or {}
        self.retry_after_s = retry_after_s


class BadRequestError(LatentqError):
    """400 or 413: the request broke a rule (``invalid_*``, ``unknown_field``, ``payload_too_large``)."""


class AuthenticationError(LatentqError):
    """401 ``unauthorized``: a missing, unknown, revoked or expired API key."""


class InsufficientBalanceError(LatentqError):
    """402 ``insufficient_balance``: the account's credits do not cover the job."""


class PermissionDeniedError(LatentqError):
    """403 ``permission_denied``: the key lacks the scope the route needs."""


class NotFoundError(LatentqError):
    """404 ``not_found``: no such job (or another account's) or route."""


class ConflictError(LatentqError):
    """409: ``job_finished``, ``job_canceled`` or ``idempotency_conflict``."""


class RateLimitError(LatentqError):
    """429: ``rate_limited``, ``too_many_jobs`` or ``too_many_streams``, still so after the retries."""


class ServiceUnavailableError(LatentqError):
    """503: ``queue_full``, ``service_busy`` or ``service_unavailable``, still so after the retries."""


class APIConnectionError(LatentqError):
    """The API could not be reached (connection refused, reset, timed out), still so after the retries."""


class WaitTimeoutError(LatentqError, TimeoutError):
    """A job did not finish within the seconds ``wait`` was given (the job goes on)."""


class JobFailedError(LatentqError):
    """A job's images were asked for but it ended ``failed`` (its error's name) or ``canceled``."""


class WebhookVerificationError(LatentqError):
    """A webhook delivery's signature or timestamp does not check out: do not trust its body."""


#: The exception class of each HTTP status; other statuses raise ``LatentqError`` itself.
ERROR_CLASSES: dict[int, type[LatentqError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientBalanceError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_answer(status_code: int, body: Any, retry_after_s: float | None = None) -> LatentqError:
    """Return the exception of an error answer: ``body`` is its parsed JSON (our envelope), or text."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        # Not our envelope (a proxy's page, say): the status is all we know.
        text = body if isinstance(body, str) else ""
        error = {"name": f"http_{status_code}", "message": text[:500] or f"HTTP {status_code}"}
    error_class = ERROR_CLASSES.get(status_code, LatentqError)
    return error_class(
        str(error.get("name", f"http_{status_code}")),
        str(error.get("message", "")),
        status_code=status_code,
        field=error.get("field"),
        details=error,
        retry_after_s=retry_after_s,
    )
