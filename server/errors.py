"""Typed errors and the one place that maps them to an HTTP status and an OpenAI error object.
No status is ever decided by matching message text."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

from server.protocol import ErrorBody, ErrorResponse


class APIError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))


class InvalidRequest(APIError):
    status, type = 400, "invalid_request_error"


class ModelNotFound(APIError):
    status, type = 404, "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="model", code="model_not_found")


class Overloaded(APIError):
    status, type = 429, "server_overloaded"


class RequestTimeout(APIError):
    status, type = 408, "timeout"


class PayloadTooLarge(APIError):
    status, type = 413, "invalid_request_error"


class ShuttingDown(APIError):
    status, type = 503, "server_shutting_down"


class ModelUnavailable(APIError):
    status, type = 503, "model_unavailable"


def to_response(exc: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
    return JSONResponse(exc.body().model_dump(), status_code=exc.status, headers=headers)


async def handle_api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return to_response(exc)
