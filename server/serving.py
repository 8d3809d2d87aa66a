"""A parsed completion or chat request in, its response out: JSON, or a stream of SSE events.

`generate` is the whole way from a route to a backend: it takes the neutral request each API
converted its body into (server/generation.py), resolves the model, checks the request against the
server's limits and encodes its prompts, makes the Job, then collects the
generation into one JSON response or stream it (`_respond`). Everything that can refuse a request
happens before the first byte goes out: the checks, then the wait for the generation's first event
(a full queue, a backend down), so a refused request gets its own status even when it asked to
stream. Engine and backend exceptions become API errors through the one table in server/errors.py.
Choices of several prompts are numbered prompt by prompt: index = prompt * n + i.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from server import auth
from server.app_state import AppState
from server.backends.base import Backend
from server.drain import Drain
from server.engine import Delta, FinishReason, Prompt, Prompter, SamplingParams, TokenLogprob, Usage
from server.errors import (
    TRANSLATED,
    ClientGone,
    InvalidRequest,
    ModelNotFound,
    RequestTimeout,
    ShuttingDown,
    to_api_error,
)
from server.generation import Conversation, GenerationRequest, Texts
from server.metrics import GenerationClock, Metrics
from server.responses import Collected, Shape, wire_usage
from server.settings import Settings

_R = TypeVar("_R")
_log = logging.getLogger("slipstream.serving")
_DISCONNECT_POLL_S = 0.25


@dataclass
class Job:
    """One request's generation, and where its timings, its access-log fields and the server's shutdown go."""

    model: str
    prompts: list[Prompt]
    params: SamplingParams
    metrics: Metrics
    drain: Drain  # the server's shutdown: a generation still going at its end is ended cleanly
    access: dict  # its access-log fields (model, tokens), filled as it runs; the log line reads them at the end
    timeout_s: float | None  # request_timeout_s: from the start of generation to its end
    ignored: list[str]  # request fields this model cannot honour (X-Slipstream-Ignored)
    request_id: str = ""  # the X-Request-Id the response carries (server/metrics.py), for the log
    headers: dict[str, str] = field(default_factory=dict)  # the response's own (a prediction cut to fit)


async def generate(
    state: AppState, asked: GenerationRequest, request: Request, shape: Callable[[str], Shape]
) -> JSONResponse | StreamingResponse:
    """Every generation route's one call (OpenAI's completions and chat, the Copilot plugin's, Ollama's,
    llama.cpp's /infill), each having converted its body into `asked`; `shape(model)` answers in the
    route's wire shape. `state` is the app's: settings, backend, metrics, drain (server/app.py)."""
    settings: Settings = state.settings
    backend: Backend = state.backend
    with _api_errors():
        model, prompter = await _resolve(backend, asked.model)
        _check_sampling(settings, asked.params, prompter)
        if isinstance(asked.prompt, Conversation):
            prompts, ignored = [_conversation(backend, model, prompter, asked.prompt, asked.params)], asked.ignored
        else:
            prompts, ignored = _texts(settings, prompter, asked.prompt, asked.params), asked.ignored
            if asked.prompt.suffix and not prompter.fills_in_the_middle:
                ignored = [*ignored, "suffix"]  # no FIM sentinels: served without it, and said so
        for prompt in prompts:
            _check_prompt_length(prompt, settings)
        prompts, headers = _with_prediction(prompter, prompts, asked.prediction)
        job = _job(state, request, model, prompts, asked, ignored)
        job.headers.update(headers)
        return await _respond(backend, job, request, shape(model), asked)


def _texts(settings: Settings, prompter: Prompter, texts: Texts, params: SamplingParams) -> list[Prompt]:
    rows = len(texts.items) * (params.best_of or params.n)
    if rows > settings.max_n:  # a list of prompts multiplies the rows as n does
        raise InvalidRequest(
            f"{len(texts.items)} prompts x {params.best_of or params.n} samples = {rows} sequences, "
            f"above this server's limit of {settings.max_n} (max_n)",
            "prompt",
        )
    # fill-in-the-middle where the model has FIM sentinels; elsewhere the suffix is ignored
    suffix = texts.suffix if prompter.fills_in_the_middle else None
    return [prompter.prepare(p, params.max_tokens, suffix=suffix, extra=list(texts.extra)) for p in texts.items]


def _conversation(backend: Backend, model: str, prompter: Prompter, chat: Conversation, params: SamplingParams) -> Prompt:
    """The conversation through the model's own chat template."""
    if not prompter.chats:
        chatty = [n for n in backend.names if (m := backend.manifest(n)) is not None and m.chat_template]
        raise InvalidRequest(
            f"model {model!r} has no chat template (a base model): use /v1/completions"
            + (f", or chat with {', '.join(chatty)}" if chatty else ""),
            "model",
        )
    return prompter.prepare(prompter.chat_prompt(chat.messages), params.max_tokens, raw=False)


def _with_prediction(prompter: Prompter, prompts: list[Prompt], prediction: str | None) -> tuple[list[Prompt], dict[str, str]]:
    """Each prompt with the prediction's tokens, as many as its context holds after the prompt: drafts
    past the context could never be used. When fewer than all, a header says how many of how many."""
    if not prediction:
        return prompts, {}
    ids = prompter.encode(prediction)
    kept = min(len(ids), *(prompter.manifest.context_length - len(p.ids) for p in prompts))
    cut = {"X-Slipstream-Prediction-Truncated": f"{kept}/{len(ids)}"} if kept < len(ids) else {}
    return [replace(p, prediction=ids[:kept]) for p in prompts], cut


@contextmanager
def _api_errors() -> Iterator[None]:
    """An engine's or a backend's exception raised before the response starts, as its API error; once a
    stream has started, _stream sends it as an error event instead."""
    try:
        yield
    except TRANSLATED as exc:
        raise to_api_error(exc) from exc


# --- checks, before anything is sent ---


async def _resolve(backend: Backend, requested: str | None) -> tuple[str, Prompter]:
    model = requested or backend.names[0]
    if model not in backend.names:
        raise ModelNotFound(f"model {model!r} is not served here; available: {', '.join(backend.names)}")
    return model, await backend.acquire(model)


def _check_sampling(settings: Settings, params: SamplingParams, prompter: Prompter) -> None:
    if params.max_tokens > settings.max_tokens_limit:
        raise InvalidRequest(f"max_tokens={params.max_tokens} is above this server's limit of {settings.max_tokens_limit}", "max_tokens")
    if len(params.stop) > settings.max_stop_sequences:
        raise InvalidRequest(f"{len(params.stop)} stop sequences given; this server allows {settings.max_stop_sequences}", "stop")
    for name, value in (("n", params.n), ("best_of", params.best_of or 0)):
        if value > settings.max_n:
            raise InvalidRequest(f"{name}={value} is above this server's limit of {settings.max_n} (max_n)", name)
    vocab = prompter.manifest.vocab_size
    for token in params.logit_bias:
        if not 0 <= token < vocab:
            raise InvalidRequest(f"logit_bias names token {token}, outside the vocabulary [0, {vocab})", "logit_bias")


def _check_prompt_length(prompt: Prompt, settings: Settings) -> None:
    sent = len(prompt.ids) - prompt.prefix + prompt.trimmed  # as the client sent it, before trimming
    if sent > settings.max_prompt_tokens:
        raise InvalidRequest(
            f"the prompt is {sent} tokens, above this server's limit of {settings.max_prompt_tokens} (max_prompt_tokens)", "prompt"
        )


def _job(state: AppState, request: Request, model: str, prompts: list[Prompt], asked: GenerationRequest, ignored: list[str]) -> Job:
    """The request's Job, whole; its access record is the request's, which the access-log line reads
    when the response has ended (server/metrics.py). The prompt goes in it only with log_prompts. Its
    prompts reuse the prefix cache only among requests of the same API key (and not at all with
    cache_prompt false)."""
    settings: Settings = state.settings
    salt = _cache_salt(state.keys, request)
    prompts = [replace(p, cache_salt=salt, cache_prompt=asked.cache_prompt) for p in prompts]
    params = asked.params
    access: dict = {"model": model, "stream": asked.stream, "n": params.n}
    if settings.log_prompts:  # the prompt and the text generated for it: the request's code, so off by default
        access["prompt"] = asked.logged()
        if isinstance(asked.prompt, Texts) and asked.prompt.suffix is not None:
            access["suffix"] = asked.prompt.suffix
        access["completions"] = [""] * (len(prompts) * params.n)
    request.state.access = access
    return Job(
        model,
        prompts,
        params,
        state.metrics,
        state.drain,
        access,
        settings.request_timeout_s,
        ignored,
        getattr(request.state, "request_id", ""),
    )


def _cache_salt(keys: list[str], request: Request) -> str:
    """A digest of the request's API key where keys are on, so that a request never reuses keys and
    values cached for another key (its response time would tell what the other typed); "" where the
    server is open, one user's."""
    if not keys:
        return ""
    return hashlib.sha256((auth.presented_key(request.headers) or "").encode()).hexdigest()


# --- the response ---


async def _respond(
    backend: Backend, job: Job, request: Request, shape: Shape, asked: GenerationRequest
) -> JSONResponse | StreamingResponse:
    """The generation as one JSON response (cancelled if the client goes away first), or as SSE once
    its first event is there: the one wait before the status line, so that a failure before it (the
    queue full, the backend down) still gets its own status instead of a 200 with an error inside."""
    headers = {"X-Slipstream-Ignored": ",".join(_header_safe(name) for name in job.ignored)} if job.ignored else {}
    headers.update(job.headers)
    if not asked.stream:
        got = await _while_connected(request, _collect(backend, job))
        whole = shape.response(got)
        return JSONResponse(whole if isinstance(whole, dict) else whole.model_dump(), headers=headers)
    events = _stream(backend, job, shape, asked.include_usage)
    first = await anext(events)

    async def from_first() -> AsyncIterator[str]:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()

    return StreamingResponse(from_first(), media_type=shape.media_type, headers={"Cache-Control": "no-cache", **headers})


def _header_safe(name: str) -> str:
    """A field name for a header value: a client's own option names (Ollama's options) may hold any
    character, and a header takes printable ASCII only (a comma would split the list)."""
    return "".join(c if " " < c <= "~" and c != "," else f"\\u{ord(c):04x}" for c in name)


async def _while_connected(request: Request, work: Awaitable[_R]) -> _R:
    """A non-streaming response's work, cancelled (and with it the generation) when the client goes
    away before it is done: an editor drops most requests as the user types on."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientGone()


async def _collect(backend: Backend, job: Job) -> Collected:
    count = len(job.prompts) * job.params.n
    texts: list[list[str]] = [[] for _ in range(count)]
    logprobs: list[list[TokenLogprob] | None] = [None] * count
    finish: list[FinishReason | None] = [None] * count
    usages: list[Usage] = []
    first_token_at = None
    async for base, event in _events(backend, job):
        if isinstance(event, Usage):
            usages.append(event)
            continue
        index = base + event.index
        if first_token_at is None:
            first_token_at = time.perf_counter()
        texts[index].append(event.text)
        if event.logprobs is not None:
            logprobs[index] = (logprobs[index] or []) + event.logprobs
        finish[index] = event.finish_reason or finish[index]
    return Collected(["".join(t) for t in texts], logprobs, finish, wire_usage(usages), first_token_at)


async def _stream(backend: Backend, job: Job, shape: Shape, include_usage: bool) -> AsyncGenerator[str, None]:
    """The shape's events: one per delta, then its closing ones (usage, the end). An error before the
    first event is raised (the response's status can still say it); after, it can no longer change
    the status: it is sent in band, as the shape sends errors."""
    usages: list[Usage] = []
    started = False
    try:
        async for base, event in _events(backend, job):
            if isinstance(event, Usage):
                usages.append(event)
            elif (framed := shape.chunk(base + event.index, event)) is not None:
                started = True
                yield framed
    except Exception as exc:  # the status line is gone: report in band, then end the stream properly
        if not started:
            raise  # nothing sent yet: the response still answers with the error's own status
        error = to_api_error(exc)
        # the client reads it in its stream; the operator in the log and on the request's access-log line
        _log.error("request %s: %s after its stream started (%s): %s", job.request_id, type(exc).__name__, error.type, exc)
        job.access["error"] = f"{error.type}: {exc}"[:500]
        yield shape.error_event(str(exc) or type(exc).__name__, error.type)
        return
    for framed in shape.closing(wire_usage(usages), include_usage):
        yield framed


# --- generation events ---


async def _events(backend: Backend, job: Job) -> AsyncIterator[tuple[int, Delta | Usage]]:
    """Every prompt's events in turn, each with its first choice's index; metrics and the access record
    follow them. request_timeout_s and the server's shutdown end the generation (a RequestTimeout, a
    ShuttingDown); leaving early cancels the rows still decoding."""
    loop = asyncio.get_running_loop()
    deadline = None if job.timeout_s is None else loop.time() + job.timeout_s
    clock = GenerationClock(job.metrics, job.model)
    for number, prompt in enumerate(job.prompts):
        events = backend.generate(job.model, prompt, job.params)
        try:
            while True:
                until, draining = deadline, False
                left = job.drain.seconds_left()
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
                        raise ShuttingDown(
                            f"the server is shutting down: this generation was ended (shutdown_grace_s={job.drain.grace_s:g})",
                            code="shutting_down",
                        ) from exc
                    raise
                if isinstance(event, Usage):
                    clock.usage(event.prompt_tokens, event.completion_tokens)
                    counts = (event.prompt_tokens, event.completion_tokens, event.cached_tokens)
                    for key, add in zip(("prompt_tokens", "completion_tokens", "cached_tokens"), counts, strict=True):
                        job.access[key] = job.access.get(key, 0) + add
                elif event.text:
                    clock.text(number * job.params.n + event.index)
                    if "completions" in job.access:
                        job.access["completions"][number * job.params.n + event.index] += event.text
                yield number * job.params.n, event
        except (GeneratorExit, asyncio.CancelledError):  # the client went away: its rows are dropped
            clock.cancelled()
            raise
        except TimeoutError as exc:  # closing the generator below cancels the rows still decoding
            clock.cancelled()
            raise RequestTimeout(
                f"the request ran past this server's limit of {job.timeout_s:g} s (request_timeout_s)", code="request_timeout"
            ) from exc
        finally:
            await events.aclose()
