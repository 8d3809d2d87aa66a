"""Typed errors, and the one table that turns an engine's or a backend's exception into one of them.

Each API error carries its HTTP status and its OpenAI error type; the app answers with them
(server/app.py) and a stream already under way sends them as an error event (server/serving.py).
No status is ever decided by matching message text.
"""

from __future__ import annotations

from server.backends.base import BackendUnavailable, ModelFailed, ModelLoading
from server.engine import InvalidInput, QueueFull
from server.protocol import ErrorBody, ErrorResponse


class APIError(Exception):
    status = 500
    type = "server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))

    def headers(self) -> dict[str, str] | None:
        """What the answer carries besides its body, in any API's error shape: a retry hint where waiting helps."""
        return {"Retry-After": "1"} if self.status in (429, 503) else None


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


class ClientGone(Exception):
    """The client disconnected before its response was ready; nobody reads what is sent back (499)."""


# The engine's and the backends' exceptions, each the API error it is answered with. A subclass
# (TritonUnavailable) is answered as its base class; the Triton model's errors come back across the
# wire as these same classes (server/triton/wire.py).
API_ERRORS: dict[type[Exception], type[APIError]] = {
    ModelLoading: ModelUnavailable,
    ModelFailed: ModelUnavailable,
    BackendUnavailable: ModelUnavailable,
    QueueFull: Overloaded,
    InvalidInput: InvalidRequest,
}
TRANSLATED = tuple(API_ERRORS)  # for an `except` clause


def to_api_error(exc: Exception) -> APIError:
    """The API error for `exc`: itself when it is one, its class's entry in API_ERRORS, else a 500."""
    if isinstance(exc, APIError):
        return exc
    for cls in type(exc).__mro__:
        if cls in API_ERRORS:
            return API_ERRORS[cls](str(exc), getattr(exc, "param", None))
    return APIError(f"{type(exc).__name__}: {exc}")
