"""Fuzzing with schemathesis, against a real API process on real Redis and S3: every operation of
our OpenAPI description and of Stability's v1 description (its routes under ``/v1``), with
generated valid and invalid input. No answer is a 5xx, none breaks the documented schema, and an
operation that needs a key refuses the request without one (``ignored_auth``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from tests.conftest import API_KEY, REPO, api_settings, serve

AUTH = {"Authorization": f"Bearer {API_KEY}"}
#: Examples per operation: the whole run stays within a couple of minutes.
EXAMPLES = 12


@pytest.fixture(scope="module")
def api_base(redis_server, s3_server) -> Iterator[str]:
    with serve(api_settings(redis_server, s3_server, sync_timeout_s=0.05)) as url:
        yield url


def fuzz(schema, base_url: str, **validate) -> tuple[int, dict[str, str]]:
    """Run every operation of ``schema`` on ``EXAMPLES`` generated cases; return how many
    operations ran and the failures, by operation."""
    failures: dict[str, str] = {}
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/readyz":  # 503 while no worker runs is its answer, by design
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None, derandomize=True)  # fmt: skip
        def check(case) -> None:
            case.call_and_validate(base_url=base_url, headers=AUTH, excluded_checks=EXCLUDED, **validate)

        ran += 1
        try:
            check()
        except BaseException as error:  # noqa: BLE001 - every operation is fuzzed, every failure reported
            failures[operation.label] = str(error)[:2000]
    return ran, failures


EXCLUDED = [checks.positive_data_acceptance, checks.negative_data_rejection,
            checks.missing_required_header, checks.unsupported_method, checks.use_after_free,
            checks.ensure_resource_availability]  # fmt: skip
#: What every answer is held to (``positive_data_acceptance`` is not: a schema cannot say that a
#: size must suit the model, or that ``prompt`` or ``text_prompts`` is needed).
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.ignored_auth]  # fmt: skip


@schemathesis.check
def no_server_error_but_the_wait(ctx, response, case) -> bool | None:
    """No 5xx, except the 504 a synchronous route (Stability's v1 and v2beta, OpenAI's) answers when its job
    outlasts the wait (no worker runs here: every job does)."""
    waits = case.operation.path.startswith(("/v1/images/", "/v1/generation/", "/generation/", "/v2beta/"))
    if response.status_code >= 500 and not (response.status_code == 504 and waits):
        raise AssertionError(f"{response.status_code}: {response.text[:300]}")
    return None


def test_our_api_answers_every_generated_request_as_documented(api_base):
    ours = [check for check in CHECKS if check is not checks.not_a_server_error] + [
        no_server_error_but_the_wait
    ]
    ran, failures = fuzz(schemathesis.openapi.from_url(f"{api_base}/openapi.json"), api_base, checks=ours)
    assert ran >= 30 and failures == {}, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


#: Stability's own description of v1, beside the checkout (the project's shared reference files).
STABILITY_V1 = REPO.parent / "shared" / "reference" / "stability-v1-openapi.yaml"


@pytest.mark.skipif(not STABILITY_V1.exists(), reason=f"Stability's description is not at {STABILITY_V1}")
def test_stabilitys_v1_description_fuzzes_clean_against_our_routes(api_base):
    stability = schemathesis.openapi.from_path(STABILITY_V1)
    checks_ = [no_server_error_but_the_wait, checks.response_schema_conformance, checks.ignored_auth]
    ran, failures = fuzz(stability, f"{api_base}/v1", checks=checks_)  # its paths are under its server's /v1
    assert ran == 7 and failures == {}, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
