"""A completion or chat request in, a response or a stream of SSE events out.

Everything that can reject a request (model, limits, prompt encoding and trimming) happens in
`prepare`, before the first byte is sent, so a bad request gets a proper 4xx status even when it
asked to stream. Choices of several prompts are numbered prompt by prompt: index = prompt * n + i.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from server.backends.base import Backend, BackendUnavailable, ModelFailed, ModelLoading
from server.drain import Drain
from server.engine.engine import Delta, InvalidInput, Prompt, Prompter, SamplingParams, TokenLogprob, Usage
from server.engine.scheduler import QueueFull
from server.errors import InvalidRequest, ModelNotFound, ModelUnavailable, Overloaded, RequestTimeout, ShuttingDown
from server.metrics import GenerationClock, Metrics
from server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    Choice,
    CompletionRequest,
    CompletionResponse,
    ErrorBody,
    ErrorResponse,
    Logprobs,
    TokenLogprobEntry,
    TopLogprob,
    chat_completion_id,
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
    timeout_s: float | None = None  # request_timeout_s: from the start of generation to its end
    metrics: Metrics | None = None  # where its timings and token counts go (set by the app)
    access: dict = field(default_factory=dict)  # its access-log fields (model, tokens), filled as it runs
    drain: Drain | None = None  # the server's shutdown: a generation still going at its end is ended cleanly


# --- checks, before anything is sent ---


async def _resolve(backend: Backend, requested: str | None) -> tuple[str, Prompter]:
    model = requested or backend.names[0]
    if model not in backend.names:
        raise ModelNotFound(f"model {model!r} is not served here; available: {', '.join(backend.names)}")
    try:
        engine = await backend.acquire(model)
    except (ModelLoading, ModelFailed) as exc:
        raise ModelUnavailable(str(exc)) from exc
    if backend.queue_full(model):
        raise Overloaded(f"model {model!r} has too many requests waiting; retry shortly")
    return model, engine


def _sampling(settings: Settings, request: CompletionRequest, engine: Prompter) -> SamplingParams:
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
            raise InvalidRequest(f"{name}={value} is above this server's limit of {settings.max_n} (max_n)", name)
    vocab = engine.manifest.vocab_size
    for token in params.logit_bias:
        if not 0 <= token < vocab:
            raise InvalidRequest(f"logit_bias names token {token}, outside the vocabulary [0, {vocab})", "logit_bias")
    return params


async def prepare(backend: Backend, settings: Settings, request: CompletionRequest) -> Job:
    model, engine = await _resolve(backend, request.model)
    params = _sampling(settings, request, engine)
    texts = request.prompts()
    rows = len(texts) * (params.best_of or params.n)
    if rows > settings.max_n:  # a list of prompts multiplies the rows as n does
        raise InvalidRequest(f"{len(texts)} prompts x {params.best_of or params.n} samples = {rows} sequences, above this "
                             f"server's limit of {settings.max_n} (max_n)", "prompt")
    # fill-in-the-middle where the model has FIM sentinels; elsewhere the suffix is ignored, and said so
    suffix = request.suffix if request.suffix is not None and engine.fills_in_the_middle else None
    try:
        prompts = [engine.prepare(p, params.max_tokens, suffix=suffix) for p in texts]
    except InvalidInput as exc:
        raise InvalidRequest(str(exc), exc.param) from exc
    for prompt in prompts:
        _check_prompt_length(prompt, settings)
    ignored = ["suffix"] if request.suffix and suffix is None else []
    return Job(model, prompts, params, ignored, settings.request_timeout_s)


def _check_prompt_length(prompt: Prompt, settings: Settings) -> None:
    sent = len(prompt.ids) - prompt.prefix + prompt.trimmed  # as the client sent it, before trimming
    if sent > settings.max_prompt_tokens:
        raise InvalidRequest(f"the prompt is {sent} tokens, above this server's limit of {settings.max_prompt_tokens} "
                             "(max_prompt_tokens)", "prompt")


async def prepare_chat(backend: Backend, settings: Settings, request: ChatCompletionRequest) -> Job:
    model, engine = await _resolve(backend, request.model)
    if not engine.chats:
        chatty = [n for n in backend.names if (m := backend.manifest(n)) is not None and m.chat_template]
        raise InvalidRequest(
            f"model {model!r} has no chat template (a base model): use /v1/completions"
            + (f", or chat with {', '.join(chatty)}" if chatty else ""),
            "model",
        )
    params = _sampling(settings, request.as_completion(), engine)
    messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    try:
        prompt = engine.prepare(engine.chat_prompt(messages), params.max_tokens, raw=False)
    except InvalidInput as exc:
        raise InvalidRequest(str(exc), exc.param) from exc
    _check_prompt_length(prompt, settings)
    return Job(model, [prompt], params, timeout_s=settings.request_timeout_s)


# --- generation events ---


async def _events(backend: Backend, job: Job) -> AsyncIterator[tuple[int, Delta | Usage]]:
    loop = asyncio.get_running_loop()
    deadline = None if job.timeout_s is None else loop.time() + job.timeout_s
    clock = GenerationClock(job.metrics, job.model)
    for number, prompt in enumerate(job.prompts):
        events = backend.generate(job.model, prompt, job.params)
        try:
            while True:
                until, draining = deadline, False
                left = job.drain.seconds_left() if job.drain is not None else None
                if left is not None and (until is None or loop.time() + left < until):
                    until, draining = loop.time() + left, True
                try:
                    async with asyncio.timeout_at(until):
                        event = await anext(events)
                except StopAsyncIteration:
                    break
                except TimeoutError as exc:
                    if draining:
                        clock.cancelled()
                        raise ShuttingDown("the server is shutting down: this generation was ended "
                                           f"(shutdown_grace_s={job.drain.grace_s:g})", code="shutting_down") from exc  # type: ignore[union-attr]
                    raise
                if isinstance(event, Usage):
                    clock.usage(event.prompt_tokens, event.completion_tokens)
                    for key, add in (("prompt_tokens", event.prompt_tokens), ("completion_tokens", event.completion_tokens)):
                        job.access[key] = job.access.get(key, 0) + add
                elif event.text:
                    clock.text(number * job.params.n + event.index)
                yield number * job.params.n, event
        except (GeneratorExit, asyncio.CancelledError):  # the client went away: its rows are dropped
            clock.cancelled()
            raise
        except TimeoutError as exc:  # closing the generator below cancels the rows still decoding
            clock.cancelled()
            raise RequestTimeout(f"the request ran past this server's limit of {job.timeout_s:g} s (request_timeout_s)",
                                 code="request_timeout") from exc
        except QueueFull as exc:
            raise Overloaded(str(exc)) from exc
        except BackendUnavailable as exc:
            raise ModelUnavailable(str(exc)) from exc
        finally:
            await events.aclose()  # type: ignore[attr-defined]


def _wire_usage(usages: list[Usage]) -> WireUsage:
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return WireUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_trimmed=sum(u.prompt_tokens_trimmed for u in usages),
    )


@dataclass
class _Collected:
    texts: list[str]
    logprobs: list[list[TokenLogprob] | None]
    finish: list[str | None]
    usage: WireUsage


async def _collect(backend: Backend, job: Job) -> _Collected:
    count = len(job.prompts) * job.params.n
    texts: list[list[str]] = [[] for _ in range(count)]
    logprobs: list[list[TokenLogprob] | None] = [None] * count
    finish: list[str | None] = [None] * count
    usages: list[Usage] = []
    async for base, event in _events(backend, job):
        if isinstance(event, Usage):
            usages.append(event)
            continue
        index = base + event.index
        texts[index].append(event.text)
        if event.logprobs is not None:
            logprobs[index] = (logprobs[index] or []) + event.logprobs
        finish[index] = event.finish_reason or finish[index]
    return _Collected(["".join(t) for t in texts], logprobs, finish, _wire_usage(usages))


# --- logprobs in the two wire layouts ---


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


# --- responses ---


async def complete(backend: Backend, job: Job) -> CompletionResponse:
    got = await _collect(backend, job)
    choices = [
        Choice(text=text, index=i, logprobs=_legacy_logprobs(got.logprobs[i], 0)[0], finish_reason=got.finish[i])  # type: ignore[arg-type]
        for i, text in enumerate(got.texts)
    ]
    return CompletionResponse(id=completion_id(), model=job.model, choices=choices, usage=got.usage)


async def chat_complete(backend: Backend, job: Job) -> ChatCompletionResponse:
    got = await _collect(backend, job)
    choices = [
        ChatChoice(
            index=i, message=AssistantMessage(content=text), logprobs=_chat_logprobs(got.logprobs[i]),
            finish_reason=got.finish[i],  # type: ignore[arg-type]
        )
        for i, text in enumerate(got.texts)
    ]
    return ChatCompletionResponse(id=chat_completion_id(), model=job.model, choices=choices, usage=got.usage)


def stream(backend: Backend, job: Job, include_usage: bool) -> AsyncIterator[str]:
    response_id = completion_id()
    offsets: dict[int, int] = {}

    def chunk(index: int, delta: Delta) -> str:
        logprobs, offsets[index] = _legacy_logprobs(delta.logprobs, offsets.get(index, 0))
        choice = Choice(text=delta.text, index=index, logprobs=logprobs, finish_reason=delta.finish_reason)  # type: ignore[arg-type]
        return CompletionResponse(id=response_id, model=job.model, choices=[choice]).model_dump_json(exclude={"usage"})

    def usage_chunk(usage: WireUsage) -> str:
        return CompletionResponse(id=response_id, model=job.model, choices=[], usage=usage).model_dump_json()

    return _sse_stream(backend, job, chunk, usage_chunk if include_usage else None)


def chat_stream(backend: Backend, job: Job, include_usage: bool) -> AsyncIterator[str]:
    response_id = chat_completion_id()
    started: set[int] = set()

    def chunk(index: int, delta: Delta) -> str:
        # the first chunk of a choice names the role; a delta carries only the fields it has
        role = None if index in started else "assistant"
        started.add(index)
        choice = ChatChunkChoice(
            index=index, delta=ChatDelta(role=role, content=delta.text if delta.text or role else None),
            logprobs=_chat_logprobs(delta.logprobs), finish_reason=delta.finish_reason,  # type: ignore[arg-type]
        )
        data = ChatCompletionChunk(id=response_id, model=job.model, choices=[choice]).model_dump(exclude={"usage"})
        data["choices"][0]["delta"] = {k: v for k, v in data["choices"][0]["delta"].items() if v is not None}
        return json.dumps(data)

    def usage_chunk(usage: WireUsage) -> str:
        return ChatCompletionChunk(id=response_id, model=job.model, choices=[], usage=usage).model_dump_json()

    return _sse_stream(backend, job, chunk, usage_chunk if include_usage else None)


async def _sse_stream(
    backend: Backend, job: Job, chunk: Callable[[int, Delta], str],
    usage_chunk: Callable[[WireUsage], str] | None,
) -> AsyncIterator[str]:
    """SSE events: one chunk per delta, an optional usage chunk, then [DONE] (always last). An error
    before the first chunk is raised (the response's status can still say it); after, it can no
    longer change the status: it is sent as an error event."""
    usages: list[Usage] = []
    started = False
    try:
        async for base, event in _events(backend, job):
            if isinstance(event, Usage):
                usages.append(event)
            else:
                started = True
                yield _sse(chunk(base + event.index, event))
        if usage_chunk is not None:
            yield _sse(usage_chunk(_wire_usage(usages)))
    except Exception as exc:  # the status line is gone: report in band, then end the stream properly
        if not started:
            raise  # nothing sent yet: the caller still answers with the error's own status
        status_type = getattr(exc, "type", "server_error")
        body = ErrorResponse(error=ErrorBody(message=str(exc) or type(exc).__name__, type=status_type))
        yield _sse(body.model_dump_json())
    yield _sse("[DONE]")


def _sse(data: str) -> str:
    return f"data: {data}\n\n"
