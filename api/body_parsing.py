"""Turn request-parsing failures into named errors that say which field broke which rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from latentq.errors import ERRORS, FIELD_ERROR_NAMES, LatentqError

Model = TypeVar("Model", bound=BaseModel)


def parse_body(model: type[Model], body: bytes) -> Model:
    """Parse ``body`` (JSON, whatever the Content-Type said) into ``model``, or raise a named error.
    (Its size was checked while it was read: ``api.request_guard``.)"""
    if not body.strip():
        raise LatentqError("invalid_json", "The request body is empty; send a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False), model) from None


def validation_error(errors: Sequence[Any], model: type[BaseModel] | None = None) -> LatentqError:
    """Return one ``LatentqError`` for pydantic ``errors``: named after the first, listing all."""
    problems = [_describe(error, model) for error in errors]
    name, field, _ = problems[0]
    message = "; ".join(text for _, _, text in problems)
    listed = [{"field": f, "message": text} for _, f, text in problems]
    return LatentqError(name, message, field=field, errors=listed)


def _describe(error: Any, model: type[BaseModel] | None) -> tuple[str, str | None, str]:
    """Return (error name, field, message) for one pydantic error."""
    kind = error["type"]
    loc = [part for part in error["loc"] if part != "body"]
    field = ".".join(str(part) for part in loc) or None
    if kind == "json_invalid":
        return (
            "invalid_json",
            None,
            f"The request body is not valid JSON: {error.get('ctx', {}).get('error', '')}",
        )
    if field is None:
        return "invalid_request", None, "The request body must be a JSON object."
    if kind == "extra_forbidden":
        if model is None or len(loc) > 1:
            return "unknown_field", field, f"Unknown field '{field}'."
        return (
            "unknown_field",
            field,
            f"Unknown field '{field}'; accepted fields: {', '.join(model.model_fields)}.",
        )
    text = error["msg"].removeprefix("Value error, ")
    if kind == "missing":
        text = "is required"
    elif "input" in error:
        text = f"{text[0].lower()}{text[1:]} (got {_shorten(error['input'])})"
    top = str(loc[0])
    name = FIELD_ERROR_NAMES.get(top) or (
        f"invalid_{top}" if f"invalid_{top}" in ERRORS else "invalid_request"
    )
    return name, field, f"{field}: {text}"


def _shorten(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """Return ``openapi_extra`` documenting a JSON body of ``model`` (for routes that parse it themselves).

    Nested models are inlined: pydantic's ``#/$defs/...`` references mean nothing in an OpenAPI document.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


def multipart_openapi(model: type[BaseModel], files: tuple[str, ...]) -> dict[str, Any]:
    """Return ``openapi_extra`` documenting a multipart body of ``model``'s fields plus ``files``."""
    schema = json_body_openapi(model)["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"].update({name: {"type": "string", "format": "binary"} for name in files})
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}
