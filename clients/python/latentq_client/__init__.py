"""latentq's Python client: ``Client`` and ``AsyncClient`` submit jobs and follow them to their images."""

__version__ = "0.1.0"

from latentq_client._http import RetryPolicy
from latentq_client.async_client import AsyncClient
from latentq_client.client import Client
from latentq_client.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InsufficientBalanceError,
    JobFailedError,
    LatentqError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from latentq_client.events import Event
from latentq_client.jobs import AsyncJob, Job, JobPage
from latentq_client.webhooks import verify_webhook

__all__ = [
    "APIConnectionError",
    "AsyncClient",
    "AsyncJob",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "Event",
    "InsufficientBalanceError",
    "Job",
    "JobFailedError",
    "JobPage",
    "LatentqError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServiceUnavailableError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "__version__",
    "verify_webhook",
]
