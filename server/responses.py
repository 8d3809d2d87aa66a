"""A generation's output in the wire shapes of server/protocol.py: the whole response from the collected
choices, or one stream chunk per delta and the usage chunk; logprobs in the legacy and the chat layout.

A shape is made per request: a stream's chunks share its id, and follow its choices (the text
offsets of legacy logprobs, the role on a chat choice's first chunk).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel

from server.engine import Delta, FinishReason, TokenLogprob, Usage
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    Choice,
    CompletionResponse,
    CompletionTokensDetails,
    ErrorBody,
    ErrorResponse,
    Logprobs,
    PromptTokensDetails,
    TokenLogprobEntry,
    TopLogprob,
    chat_completion_id,
    completion_id,
)
from server.protocol import Usage as WireUsage


@dataclass
class Collected:
    """A whole generation, choice by choice (index = prompt * n + i)."""

    texts: list[str]
    logprobs: list[list[TokenLogprob] | None]
    finish: list[FinishReason | None]
    usage: WireUsage
    first_token_at: float | None = None  # time.perf_counter() at the first token's event (timings)


def wire_usage(usages: list[Usage]) -> WireUsage:
    """The usage of every prompt of a request, summed."""
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return WireUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(u.cached_tokens for u in usages)),
        prompt_tokens_trimmed=sum(u.prompt_tokens_trimmed for u in usages),
        completion_tokens_details=CompletionTokensDetails(
            accepted_prediction_tokens=sum(u.accepted_prediction_tokens for u in usages),
            rejected_prediction_tokens=sum(u.rejected_prediction_tokens for u in usages),
            draft_tokens=sum(u.draft_tokens for u in usages),
            accepted_draft_tokens=sum(u.accepted_draft_tokens for u in usages),
        ),
    )


class Shape(Protocol):
    """A route's wire shape: its whole response, and its stream's media type and framed events."""

    media_type: str

    def response(self, got: Collected) -> BaseModel | dict: ...

    def chunk(self, index: int, delta: Delta) -> str | None: ...

    def closing(self, usage: WireUsage, include_usage: bool) -> list[str]: ...

    def error_event(self, message: str, kind: str) -> str: ...


class OpenAIStream:
    """The OpenAI routes' stream: server-sent events, a usage chunk when asked for, `[DONE]` last, an
    error after the start as an error object in band."""

    media_type = "text/event-stream"

    def usage_chunk(self, usage: WireUsage) -> str:
        raise NotImplementedError

    def closing(self, usage: WireUsage, include_usage: bool) -> list[str]:
        return [*([sse(self.usage_chunk(usage))] if include_usage else []), sse("[DONE]")]

    def error_event(self, message: str, kind: str) -> str:
        return sse(ErrorResponse(error=ErrorBody(message=message, type=kind)).model_dump_json()) + sse("[DONE]")


def sse(data: str) -> str:
    return f"data: {data}\n\n"


class CompletionShape(OpenAIStream):
    """/v1/completions: text choices, legacy logprobs."""

    def __init__(self, model: str) -> None:
        self._id, self._model = completion_id(), model
        self._offsets: dict[int, int] = {}  # where each streamed choice's next token starts in its text

    def response(self, got: Collected) -> CompletionResponse:
        choices = [
            Choice(text=text, index=i, logprobs=_legacy_logprobs(got.logprobs[i], 0)[0], finish_reason=got.finish[i])
            for i, text in enumerate(got.texts)
        ]
        return CompletionResponse(id=self._id, model=self._model, choices=choices, usage=got.usage)

    def chunk(self, index: int, delta: Delta) -> str:
        logprobs, self._offsets[index] = _legacy_logprobs(delta.logprobs, self._offsets.get(index, 0))
        choice = Choice(text=delta.text, index=index, logprobs=logprobs, finish_reason=delta.finish_reason)
        return sse(CompletionResponse(id=self._id, model=self._model, choices=[choice]).model_dump_json(exclude={"usage"}))

    def usage_chunk(self, usage: WireUsage) -> str:
        return CompletionResponse(id=self._id, model=self._model, choices=[], usage=usage).model_dump_json()


class ChatShape(OpenAIStream):
    """/v1/chat/completions: assistant messages, chat logprobs."""

    def __init__(self, model: str) -> None:
        self._id, self._model = chat_completion_id(), model
        self._started: set[int] = set()  # the streamed choices that have had their first chunk

    def response(self, got: Collected) -> ChatCompletionResponse:
        choices = [
            ChatChoice(
                index=i, message=AssistantMessage(content=text), logprobs=_chat_logprobs(got.logprobs[i]), finish_reason=got.finish[i]
            )
            for i, text in enumerate(got.texts)
        ]
        return ChatCompletionResponse(id=self._id, model=self._model, choices=choices, usage=got.usage)

    def chunk(self, index: int, delta: Delta) -> str:
        # the first chunk of a choice names the role; a delta carries only the fields it has
        role: Literal["assistant"] | None = None if index in self._started else "assistant"
        self._started.add(index)
        choice = ChatChunkChoice(
            index=index,
            delta=ChatDelta(role=role, content=delta.text if delta.text or role else None),
            logprobs=_chat_logprobs(delta.logprobs),
            finish_reason=delta.finish_reason,
        )
        data = ChatCompletionChunk(id=self._id, model=self._model, choices=[choice]).model_dump(exclude={"usage"})
        data["choices"][0]["delta"] = {k: v for k, v in data["choices"][0]["delta"].items() if v is not None}
        return sse(json.dumps(data))

    def usage_chunk(self, usage: WireUsage) -> str:
        return ChatCompletionChunk(id=self._id, model=self._model, choices=[], usage=usage).model_dump_json()


def _legacy_logprobs(items: list[TokenLogprob] | None, offset: int) -> tuple[Logprobs | None, int]:
    """The legacy parallel arrays; text_offset: where each token starts in the choice's text (echoed
    prompt included), counted on from `offset`."""
    if items is None:
        return None, offset
    out = Logprobs()
    for item in items:
        out.tokens.append(item.token)
        out.token_logprobs.append(item.logprob)
        out.top_logprobs.append(item.top)
        out.text_offset.append(offset)
        offset += len(item.token)
    return out, offset


def _chat_logprobs(items: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if items is None:
        return None

    def entry(token: str, logprob: float) -> TopLogprob:
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

    return ChatLogprobs(
        content=[
            TokenLogprobEntry(
                **entry(i.token, i.logprob or 0.0).model_dump(),
                top_logprobs=[entry(t, v) for t, v in (i.top or {}).items()],
            )
            for i in items
        ]
    )


__all__ = ["ChatShape", "Collected", "CompletionShape", "OpenAIStream", "Shape", "sse", "wire_usage"]
