"""The OpenAPI document says what the routes do: the bearer scheme on every /v1 route, no 422
that never comes, the error envelope on every error answer, the headers the routes read."""

from __future__ import annotations

import httpx


def operations(document: dict) -> list[tuple[str, str, dict]]:
    return [(method, path, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def test_the_document_declares_the_key_and_the_errors(api_url):
    response = httpx.get(api_url + "/openapi.json")
    assert response.status_code == 200  # public: it is how /docs finds its way
    document = response.json()
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "422" not in response.text and "HTTPValidationError" not in response.text
    for method, path, operation in operations(document):
        if not path.startswith(("/v1/", "/v2beta/")):
            continue
        assert operation["security"] == [{"bearer": []}], (method, path)
        assert "401" in operation["responses"], (method, path)
        for status, answer in operation["responses"].items():
            if status[0] in "45":
                schema = answer["content"]["application/json"]["schema"]["$ref"]
                expected = "StabilityError" if "/generation/" in path or "/user/" in path else "Error"
                expected = "StabilityV2Error" if path.startswith("/v2beta/") else expected
                assert schema.endswith(expected), (method, path, status)
        if "requestBody" in operation:
            assert {"400", "413"} <= set(operation["responses"]), (method, path)


def test_the_headers_the_routes_read_are_declared(api_url):
    paths = httpx.get(api_url + "/openapi.json").json()["paths"]

    def headers(method: str, path: str) -> set[str]:
        return {p["name"] for p in paths[path][method].get("parameters", []) if p["in"] == "header"}

    assert headers("post", "/v1/generate") == {"Idempotency-Key", "Prefer"}
    assert headers("get", "/v1/jobs/{job_id}/events") == {"Last-Event-ID"}
    assert "400" not in paths["/v1/jobs/{job_id}"]["get"]["responses"]  # a path id alone cannot be malformed
