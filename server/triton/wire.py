"""What the API and the Triton model send each other: JSON strings in TYPE_STRING tensors.

    prompt               {"ids": [...], "text": "...", "trimmed": 0, "prefix": 1}   (the API tokenises)
    sampling_parameters  the engine's SamplingParams fields, by name
    event                {"delta": {...}} | {"usage": {...}} | {"error": {"type", "message", "param"}}

    sampling_parameters  {"cancel": REQUEST_ID}: a control request on the same stream, which ends the
                         request of that id (its client went away); answered with the final flag only

One response per event, then Triton's final flag. An error is an event too (then the final flag), so
that a refusal keeps its kind (a full queue, a bad field) across the wire: the model sends the kind of
the engine's exception, and the API raises that same exception again (RemoteError.local), which
server/errors.py answers as it does in process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from server.engine import Delta, InvalidInput, Prompt, QueueFull, SamplingParams, TokenLogprob, Usage

QUEUE_FULL, INVALID_INPUT, INTERNAL = "queue_full", "invalid_input", "internal"
# an error event's kind, each the engine exception it stands for, both ways; any other is INTERNAL
_KINDS: dict[str, type[Exception]] = {QUEUE_FULL: QueueFull, INVALID_INPUT: InvalidInput}
REFUSALS = tuple(_KINDS.values())  # what the model refuses a request with (the rest is its own failure)


class RemoteError(RuntimeError):
    """An error event from the Triton model."""

    def __init__(self, kind: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.param = kind, param

    def local(self) -> Exception:
        """The engine's own exception that the model sent, so that the API answers as it does in process."""
        cls = _KINDS.get(self.kind)
        if cls is InvalidInput:
            return InvalidInput(str(self), self.param or "prompt")
        if cls is not None:
            return cls(str(self))
        return RuntimeError(f"Triton model error: {self}")


def dump_prompt(prompt: Prompt) -> str:
    return json.dumps(asdict(prompt))


def load_prompt(text: str) -> Prompt:
    return Prompt(**json.loads(text))


def dump_params(params: SamplingParams) -> str:
    values = asdict(params)
    values["stop"] = list(params.stop)
    values["logit_bias"] = {str(k): v for k, v in params.logit_bias.items()}  # JSON keys are strings
    return json.dumps(values)


def load_params(text: str) -> SamplingParams:
    values = json.loads(text)
    unknown = set(values) - {f.name for f in fields(SamplingParams)}
    if unknown:
        raise ValueError(f"unknown sampling parameters: {', '.join(sorted(unknown))}")
    if "stop" in values:
        values["stop"] = tuple(values["stop"])
    if "logit_bias" in values:
        values["logit_bias"] = {int(k): float(v) for k, v in values["logit_bias"].items()}
    return SamplingParams(**values)


def dump_cancel(request_id: str) -> str:
    return json.dumps({"cancel": request_id})


def load_cancel(text: str) -> str | None:
    """The request id a control request cancels, or None for a generation request."""
    try:
        values = json.loads(text)
    except ValueError:
        return None
    if isinstance(values, dict) and set(values) == {"cancel"} and isinstance(values["cancel"], str):
        return values["cancel"]
    return None


def dump_event(event: Delta | Usage) -> str:
    return json.dumps({"delta" if isinstance(event, Delta) else "usage": asdict(event)})


def dump_error(kind: str, message: str, param: str | None = None) -> str:
    return json.dumps({"error": {"type": kind, "message": message, "param": param}})


def error_fields(exc: Exception) -> tuple[str, str, str | None]:
    """An exception the engine raised as (kind, message, param): its kind from _KINDS, INTERNAL (its
    type named in the message) for any other."""
    kind = next((k for k, cls in _KINDS.items() if isinstance(exc, cls)), INTERNAL)
    if kind == INTERNAL:
        return INTERNAL, f"{type(exc).__name__}: {exc}", None
    return kind, str(exc), getattr(exc, "param", None)


def dump_exception(exc: Exception) -> str:
    """The error event for an exception the engine raised."""
    return dump_error(*error_fields(exc))


def load_event(text: str) -> Delta | Usage:
    """The event, or RemoteError raised for an error event."""
    data = json.loads(text)
    if "delta" in data:
        delta = data["delta"]
        logprobs = delta.get("logprobs")
        if logprobs is not None:
            delta["logprobs"] = [TokenLogprob(**lp) for lp in logprobs]
        return Delta(**delta)
    if "usage" in data:
        return Usage(**data["usage"])
    error = data.get("error") or {}
    raise RemoteError(error.get("type", INTERNAL), error.get("message", f"malformed event: {text[:200]}"), error.get("param"))
