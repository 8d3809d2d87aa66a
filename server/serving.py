"""A CompletionRequest in, a CompletionResponse or a stream of SSE events out.

Everything that can reject a request (model, limits, prompt encoding and trimming) happens in
`prepare`, before the first byte is sent, so a bad request gets a proper 4xx status even when it
asked to stream. Choices of several prompts are numbered prompt by prompt: index = prompt * n + i.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator

from server.backends.embedded import EmbeddedBackend, ModelFailed, ModelLoading
from server.engine.engine import Delta, InvalidInput, Prompt, SamplingParams, Usage
from server.engine.scheduler import QueueFull
from server.errors import InvalidRequest, ModelNotFound, ModelUnavailable, Overloaded
from server.protocol import (
    Choice,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    Logprobs,
    completion_id,
)
from server.protocol import Usage as WireUsage
from server.settings import Settings


@dataclass
class Job:
    model: str
    prompts: list[Prompt]
    params: SamplingParams
    ignored: list[str] = field(default_factory=list)  # request fields this model cannot honour


def prepare(backend: EmbeddedBackend, settings: Settings, request: CompletionRequest) -> Job:
    model = request.model or backend.names[0]
    if model not in backend.names:
        raise ModelNotFound(f"model {model!r} is not served here; available: {', '.join(backend.names)}")
    try:
        engine = backend.engine(model)
    except (ModelLoading, ModelFailed) as exc:
        raise ModelUnavailable(str(exc)) from exc
    if backend.queue_full(model):
        raise Overloaded(f"model {model!r} has too many requests waiting; retry shortly")
    params = request.to_sampling_params(
        default_max_tokens=settings.default_max_tokens, default_temperature=settings.default_temperature
    )
    if params.max_tokens > settings.max_tokens_limit:
        raise InvalidRequest(
            f"max_tokens={params.max_tokens} is above this server's limit of {settings.max_tokens_limit}", "max_tokens"
        )
    if len(params.stop) > settings.max_stop_sequences:
        raise InvalidRequest(
            f"{len(params.stop)} stop sequences given; this server allows {settings.max_stop_sequences}", "stop"
        )
    for name, value in (("n", request.n), ("best_of", request.best_of or 0)):
        if value > settings.max_n:
            raise InvalidRequest(f"{name}={value} is above this server's limit of {settings.max_n}", name)
    vocab = engine.manifest.vocab_size
    for token in params.logit_bias:
        if not 0 <= token < vocab:
            raise InvalidRequest(f"logit_bias names token {token}, outside the vocabulary [0, {vocab})", "logit_bias")
    try:
        prompts = [engine.prepare(p, params.max_tokens) for p in request.prompts()]
    except InvalidInput as exc:
        raise InvalidRequest(str(exc), exc.param) from exc
    # Fill-in-the-middle comes with models that have FIM sentinels; until then a suffix is not used.
    ignored = ["suffix"] if request.suffix else []
    return Job(model, prompts, params, ignored)


async def _events(backend: EmbeddedBackend, job: Job) -> AsyncIterator[tuple[int, Delta | Usage]]:
    for number, prompt in enumerate(job.prompts):
        try:
            async for event in backend.generate(job.model, prompt, job.params):
                yield number * job.params.n, event
        except QueueFull as exc:
            raise Overloaded(str(exc)) from exc


class _Offsets:
    """text_offset per choice: where each token starts in the choice's text (echoed prompt included)."""

    def __init__(self) -> None:
        self._at: dict[int, int] = {}

    def logprobs(self, index: int, delta: Delta) -> Logprobs | None:
        if delta.logprobs is None:
            return None
        out = Logprobs()
        at = self._at.get(index, 0)
        for item in delta.logprobs:
            out.tokens.append(item.token)
            out.token_logprobs.append(item.logprob)
            out.top_logprobs.append(item.top)
            out.text_offset.append(at)
            at += len(item.token)
        self._at[index] = at
        return out


def _wire_usage(usages: list[Usage]) -> WireUsage:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return WireUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_trimmed=sum(u.prompt_tokens_trimmed for u in usages),
    )


async def complete(backend: EmbeddedBackend, job: Job) -> CompletionResponse:
    count = len(job.prompts) * job.params.n
    texts: list[list[str]] = [[] for _ in range(count)]
    logprobs: list[Logprobs | None] = [None] * count
    finish: list[str | None] = [None] * count
    usages: list[Usage] = []
    offsets = _Offsets()
    async for base, event in _events(backend, job):
        if isinstance(event, Usage):
            usages.append(event)
            continue
        index = base + event.index
        texts[index].append(event.text)
        if (lp := offsets.logprobs(index, event)) is not None:
            merged = logprobs[index] or Logprobs()
            for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                getattr(merged, key).extend(getattr(lp, key))
            logprobs[index] = merged
        finish[index] = event.finish_reason or finish[index]
    choices = [
        Choice(text="".join(texts[i]), index=i, logprobs=logprobs[i], finish_reason=finish[i])  # type: ignore[arg-type]
        for i in range(count)
    ]
    return CompletionResponse(id=completion_id(), model=job.model, choices=choices, usage=_wire_usage(usages))


async def stream(backend: EmbeddedBackend, job: Job, include_usage: bool) -> AsyncIterator[str]:
    """SSE events: one chunk per delta, an optional usage chunk, then [DONE] (always last). An error
    after the stream started can no longer change the status: it is sent as an error event."""
    response_id = completion_id()
    offsets = _Offsets()
    usages: list[Usage] = []
    try:
        async for base, event in _events(backend, job):
            if isinstance(event, Usage):
                usages.append(event)
                continue
            index = base + event.index
            choice = Choice(
                text=event.text, index=index, logprobs=offsets.logprobs(index, event),
                finish_reason=event.finish_reason,  # type: ignore[arg-type]
            )
            chunk = CompletionResponse(id=response_id, model=job.model, choices=[choice])
            yield _sse(chunk.model_dump_json(exclude={"usage"}))
        if include_usage:
            chunk = CompletionResponse(id=response_id, model=job.model, choices=[], usage=_wire_usage(usages))
            yield _sse(chunk.model_dump_json())
    except Exception as exc:  # the status line is gone: report in band, then end the stream properly
        status_type = getattr(exc, "type", "server_error")
        body = ErrorResponse(error=ErrorBody(message=str(exc) or type(exc).__name__, type=status_type))
        yield _sse(body.model_dump_json())
    yield _sse("[DONE]")


def _sse(data: str) -> str:
    return f"data: {data}\n\n"
