"""Fixtures of the integration tests beyond the session's services: the webhook harness."""

from tests.integration.webhook_harness import dispatcher, hook_api, receiver

__all__ = ["dispatcher", "hook_api", "receiver"]
