"""The OpenAPI document of the generation routes, which parse their own body (server/body.py) and so
hide their models from FastAPI: the request and response schemas and every error status, added by
hand, so that a client (or a schema fuzzer) knows every status it can get."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from server.protocol import ChatCompletionRequest, ChatCompletionResponse, CompletionRequest, CompletionResponse, ErrorResponse

# What a generation route answers besides 200, each with an OpenAI error object (server/errors.py, auth.py)
_ERROR_STATUSES = {
    "400": "Invalid request: the error's `param` names the field",
    "401": "No valid API key (only when keys are configured)",
    "404": "Unknown model",
    "408": "Past request_timeout_s",
    "413": "Body past max_body_bytes",
    "429": "Too many requests waiting for the model (Retry-After)",
    "503": "The model is not loaded or failed, or the server is shutting down (Retry-After)",
}


_COMPONENTS: list[type[BaseModel]] = []  # every model a route's openapi_extra refers to


def route_doc(
    request: type[BaseModel],
    response: type[BaseModel] | None = None,
    error: type[BaseModel] = ErrorResponse,
    stream: str = "text/event-stream",
) -> dict:
    """A generation route's openapi_extra: its request body and its responses (the whole one, the
    stream's media type), errors included in the route's own error shape."""
    ref = "#/components/schemas/{}".format
    _COMPONENTS.extend(m for m in (request, response, error) if m is not None and m not in _COMPONENTS)
    whole = {"schema": {"$ref": ref(response.__name__)}} if response is not None else {}
    failed = {"application/json": {"schema": {"$ref": ref(error.__name__)}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": ref(request.__name__)}}}},
        "responses": {
            "200": {"description": "The generation", "content": {"application/json": whole, stream: {}}},
            **{status: {"description": why, "content": failed} for status, why in _ERROR_STATUSES.items()},
        },
    }


COMPLETION_DOC = route_doc(CompletionRequest, CompletionResponse)
CHAT_DOC = route_doc(ChatCompletionRequest, ChatCompletionResponse)


def document_schemas(app: FastAPI) -> None:
    """Add the models the routes' openapi_extra refer to to the app's OpenAPI document."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _COMPONENTS:
            definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[model.__name__] = definition
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend its schema


__all__ = ["CHAT_DOC", "COMPLETION_DOC", "document_schemas", "route_doc"]
