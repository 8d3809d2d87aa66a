"""Client and AsyncClient for the legacy Completions API over httpx.

One implementation: the sync Client drives the AsyncClient on a private event loop. Responses are
normalised over the known differences of peer servers (shared/reference/api-contract.md): llama.cpp's
chat-style logprobs become the legacy arrays, a string `stop` is always sent as a list (FauxPilot
splits a string into characters), and an HTTP 200 without choices (FauxPilot's way to report a
backend failure) raises instead of passing for an empty completion."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

__all__ = ["APIError", "AsyncClient", "Client", "PromptInput", "Timing"]

log = logging.getLogger("slipstream.client")

# a completion's prompt as the API takes it: text, texts, token ids, or lists of token ids
PromptInput = str | list[str] | list[int] | list[list[int]]

_RETRY_STATUSES = (429, 503)
# a server restarting, seen from here: nothing listens, or a connection is dropped before its answer
_OUTAGE_ERRORS = (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
_MAX_DELAY_S = 5.0


class APIError(Exception):
    """The server answered with an error; `error` is its OpenAI error object when it sent one, and
    `retry_after` its Retry-After header in seconds, when it sent one."""

    def __init__(self, status: int, error: dict[str, Any], retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {error.get('message', error)}")
        self.status, self.error, self.retry_after = status, error, retry_after


@dataclass
class Timing:
    """One streamed completion as the client saw it."""

    ttft_s: float | None  # request sent -> first chunk with text (None: no text came)
    total_s: float  # request sent -> end of stream
    gaps_s: list[float] = field(default_factory=list)  # between text chunks after the first
    text: str = ""
    chunks: int = 0  # text chunks (about one token each on servers that stream token by token)
    completion_tokens: int | None = None  # from the server's usage, when it sends one
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens: None where not reported
    finish_reason: str | None = None


class _RetryPolicy:
    """When tenacity sends one request again: a 429 or 503 up to max_retries times, and within `window`
    seconds of its first failure also a server that is away (refused or dropped connections, 503s: a
    restart), after Retry-After or an exponential backoff (capped, and never past the window); a log
    line for each. One per request: it remembers when that request first failed."""

    def __init__(self, what: str, max_retries: int, backoff: float, window: float) -> None:
        self.what, self.max_retries, self.backoff, self.window = what, max_retries, backoff, window
        self.first_failure: float | None = None

    def retrying(self) -> AsyncRetrying:
        return AsyncRetrying(retry=retry_if_exception(_retryable), stop=self._stop, wait=self._wait, before_sleep=self._log, reraise=True)

    def _counted(self, state: RetryCallState) -> bool:
        """A 429/503 within max_retries (the retries so far are attempt_number - 1)."""
        return isinstance(_failure(state), APIError) and state.attempt_number - 1 < self.max_retries

    def _left(self, state: RetryCallState) -> float:
        now = state.outcome_timestamp or time.monotonic()
        self.first_failure = self.first_failure if self.first_failure is not None else now
        return self.window - (now - self.first_failure)

    def _stop(self, state: RetryCallState) -> bool:
        return not self._counted(state) and self._left(state) <= 0

    def _wait(self, state: RetryCallState) -> float:
        failure = _failure(state)
        retry_after = failure.retry_after if isinstance(failure, APIError) else None
        delay = retry_after if retry_after is not None else min(self.backoff * 2 ** (state.attempt_number - 1), _MAX_DELAY_S)
        return delay if self._counted(state) else min(delay, self._left(state))

    def _log(self, state: RetryCallState) -> None:
        failure = _failure(state)
        why = str(failure) if isinstance(failure, APIError) else f"{type(failure).__name__}: {failure}".rstrip(": ")
        giving_up = "" if self._counted(state) else f" (giving up in {self._left(state):.0f} s)"
        log.warning("%s failed (%s); retry %d in %.1f s%s", self.what, why, state.attempt_number, state.upcoming_sleep, giving_up)


def _failure(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _retryable(failure: BaseException) -> bool:
    """A refusal that waiting may cure (429, 503), or a server that is away."""
    return (isinstance(failure, APIError) and failure.status in _RETRY_STATUSES) or isinstance(failure, _OUTAGE_ERRORS)


# where a caller's key comes from when none is given ("" is none): ours first, then the one OpenAI's own
# clients read, so that the harness measures a keyed server (ours, vLLM's --api-key, a hosted API)
ENV_KEYS = ("SLIPSTREAM_API_KEY", "OPENAI_API_KEY")


def key_from_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    return next((environ[name] for name in ENV_KEYS if environ.get(name)), None)


class AsyncClient:
    """`api_key`: sent as a bearer; None reads SLIPSTREAM_API_KEY, then OPENAI_API_KEY; "" sends none.
    `retry_window`: seconds for which a request rides through a server that is away (restarting):
    connections refused or dropped before the answer and 503s are retried with backoff until that long
    after its first failure (0: never; 429 and 503 are still retried `max_retries` times). A stream is
    sent again only before its first chunk: what a caller has received is never repeated."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:5000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        retry_window: float = 0.0,
    ) -> None:
        api_key = key_from_environment() if api_key is None else api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._max_retries, self._backoff, self._retry_window = max_retries, backoff, retry_window

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[dict[str, Any]]:
        response = await self._send("GET", "/v1/models")
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def complete(self, prompt: PromptInput, **params: Any) -> dict[str, Any]:
        """A non-streaming completion; params are the API's fields (max_tokens, temperature, n, ...)."""
        response = await self._send("POST", "/v1/completions", json=_body(prompt, params, stream=False))
        return _normalise(response.status_code, response.json(), expect_choices=True)

    async def timed(self, prompt: PromptInput, *, timing: Timing | None = None, **params: Any) -> Timing:
        """One streamed completion (n=1) with its timings: time to first token, the gaps between
        chunks, the total; token counts from the usage the server sends last, where it does.

        `timing` is filled as chunks arrive, so that a caller who cancels the call mid-stream (an editor
        dropping the request in flight at the next keystroke: cancel the task, and the stream is closed,
        which the server sees as the client going away) keeps what had arrived by then."""
        options = {**params, "stream_options": {"include_usage": True}}
        started = time.perf_counter()
        timing = timing if timing is not None else Timing(ttft_s=None, total_s=0.0)
        last = started
        async for chunk in self.stream(prompt, **options):
            now = time.perf_counter()
            for choice in chunk.get("choices") or []:
                if choice.get("text"):
                    if timing.ttft_s is None:
                        timing.ttft_s = now - started
                    else:
                        timing.gaps_s.append(now - last)
                    last = now
                    timing.text += choice["text"]
                    timing.chunks += 1
                timing.finish_reason = choice.get("finish_reason") or timing.finish_reason
            usage = chunk.get("usage")
            if usage:
                timing.completion_tokens = usage.get("completion_tokens")
                timing.prompt_tokens = usage.get("prompt_tokens")
                details = usage.get("prompt_tokens_details") or {}
                timing.cached_tokens = details.get("cached_tokens") if isinstance(details, dict) else None
        timing.total_s = time.perf_counter() - started
        return timing

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """A non-streaming chat completion (/v1/chat/completions)."""
        response = await self._send("POST", "/v1/chat/completions", json={"messages": messages, **params, "stream": False})
        reply: dict[str, Any] = response.json()
        return reply

    async def stream(self, prompt: PromptInput, **params: Any) -> AsyncGenerator[dict[str, Any], None]:
        """Chunks of a streaming completion as the server sends them; an error event raises APIError. Sent
        again (as the retry policy says) only until its first event has come."""
        body = _body(prompt, params, stream=True)
        retrying = self._retries("POST /v1/completions (stream)").retrying()
        response, events, data = await retrying.wraps(self._open_stream)(body)
        try:
            while data is not None and data != "[DONE]":
                chunk = json.loads(data)
                if "error" in chunk:
                    raise APIError(response.status_code, chunk["error"])
                yield _normalise(response.status_code, chunk, expect_choices=False)
                data = await anext(events, None)
        finally:
            await events.aclose()
            await response.aclose()

    async def _open_stream(self, body: dict[str, Any]) -> tuple[httpx.Response, AsyncGenerator[str, None], str | None]:
        """The stream's response and its events, with the first event's data read (None: none came): a
        failure up to there can still be retried."""
        response = await self._http.send(self._http.build_request("POST", "/v1/completions", json=body), stream=True)
        try:
            if response.status_code >= 400:
                await response.aread()
                raise _error(response)
            events = _sse_data(response)
            return response, events, await anext(events, None)
        except BaseException:
            await response.aclose()
            raise

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def once() -> httpx.Response:
            response = await self._http.request(method, path, **kwargs)
            if response.status_code >= 400:
                raise _error(response)
            return response

        return await self._retries(f"{method} {path}").retrying().wraps(once)()

    def _retries(self, what: str) -> _RetryPolicy:
        return _RetryPolicy(what, self._max_retries, self._backoff, self._retry_window)


def _body(prompt: PromptInput, params: dict[str, Any], *, stream: bool) -> dict[str, Any]:
    body = {"prompt": prompt, **params, "stream": stream}
    if isinstance(body.get("stop"), str):
        body["stop"] = [body["stop"]]
    return body


def _normalise(status: int, payload: dict[str, Any], *, expect_choices: bool) -> dict[str, Any]:
    choices = payload.get("choices")
    if expect_choices and not choices:
        raise APIError(
            status, {"message": "the server answered without any choice (a backend failure reported as success)", "type": "empty_response"}
        )
    for choice in choices or []:
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and "content" in logprobs and "tokens" not in logprobs:
            choice["logprobs"] = _legacy_logprobs(logprobs["content"] or [])
    return payload


def _legacy_logprobs(content: list[dict[str, Any]]) -> dict[str, Any]:
    """llama.cpp's chat-style entries ({token, logprob, top_logprobs: [{token, logprob}]}) as the legacy
    arrays, text_offset counted over the completion."""
    tokens, offsets, offset = [], [], 0
    for entry in content:
        tokens.append(entry.get("token", ""))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [e.get("logprob") for e in content],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e.get("top_logprobs") or []} for e in content],
        "text_offset": offsets,
    }


async def _sse_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The data of each server-sent event (multi-line data joined by newlines, as the SSE spec says)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def _error(response: httpx.Response) -> APIError:
    try:
        payload = response.json()
        error = payload.get("error", payload) if isinstance(payload, dict) else {"message": str(payload)}
    except ValueError:
        error = {"message": response.text}
    retry_after = response.headers.get("Retry-After", "")
    return APIError(
        response.status_code,
        error if isinstance(error, dict) else {"message": str(error)},
        float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None,
    )


class Client:
    """The AsyncClient's calls, blocking; usable as a context manager."""

    def __init__(self, base_url: str = "http://127.0.0.1:5000", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = AsyncClient(base_url, **options)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run_until_complete(self._async.aclose())
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def models(self) -> list[dict[str, Any]]:
        return self._loop.run_until_complete(self._async.models())

    def complete(self, prompt: PromptInput, **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._async.complete(prompt, **params))

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._async.chat(messages, **params))

    def timed(self, prompt: PromptInput, **params: Any) -> Timing:
        return self._loop.run_until_complete(self._async.timed(prompt, **params))

    def stream(self, prompt: PromptInput, **params: Any) -> Iterator[dict[str, Any]]:
        chunks = self._async.stream(prompt, **params)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(chunks.aclose())
