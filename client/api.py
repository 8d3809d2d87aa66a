"""Client and AsyncClient for the legacy Completions API over httpx.

One implementation: the sync Client drives the AsyncClient on a private event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, AsyncIterator, Iterator

import httpx

__all__ = ["APIError", "AsyncClient", "Client"]

_RETRY_STATUSES = (429, 503)


class APIError(Exception):
    """The server answered with an error; `error` is its OpenAI error object when it sent one."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {error.get('message', error)}")
        self.status, self.error = status, error


class AsyncClient:
    def __init__(
        self, base_url: str = "http://127.0.0.1:5000", *, api_key: str | None = None,
        timeout: float = 120.0, max_retries: int = 2, backoff: float = 0.5,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self._max_retries, self._backoff = max_retries, backoff

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def models(self) -> list[dict[str, Any]]:
        response = await self._send("GET", "/v1/models")
        return response.json()["data"]

    async def complete(self, prompt: str | list, **params: Any) -> dict[str, Any]:
        """A non-streaming completion; params are the API's fields (max_tokens, temperature, n, ...)."""
        response = await self._send("POST", "/v1/completions", json={"prompt": prompt, **params, "stream": False})
        return response.json()

    async def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """A non-streaming chat completion (/v1/chat/completions)."""
        response = await self._send("POST", "/v1/chat/completions", json={"messages": messages, **params, "stream": False})
        return response.json()

    async def stream(self, prompt: str | list, **params: Any) -> AsyncIterator[dict[str, Any]]:
        """Chunks of a streaming completion as the server sends them; an error event raises APIError."""
        body = {"prompt": prompt, **params, "stream": True}
        for attempt in range(self._max_retries + 1):
            async with self._http.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code in _RETRY_STATUSES and attempt < self._max_retries:
                    await asyncio.sleep(self._retry_delay(response, attempt))
                    continue
                if response.status_code >= 400:
                    await response.aread()
                    raise _error(response)
                async with contextlib.aclosing(_sse_data(response)) as events:
                    async for data in events:
                        if data == "[DONE]":
                            return
                        chunk = json.loads(data)
                        if "error" in chunk:
                            raise APIError(response.status_code, chunk["error"])
                        yield chunk
                return

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self._max_retries + 1):
            response = await self._http.request(method, path, **kwargs)
            if response.status_code in _RETRY_STATUSES and attempt < self._max_retries:
                await asyncio.sleep(self._retry_delay(response, attempt))
                continue
            if response.status_code >= 400:
                raise _error(response)
            return response
        raise AssertionError("unreachable")

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float:
        retry_after = response.headers.get("Retry-After", "")
        return float(retry_after) if retry_after.replace(".", "", 1).isdigit() else self._backoff * 2**attempt


async def _sse_data(response: httpx.Response) -> AsyncIterator[str]:
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
    return APIError(response.status_code, error if isinstance(error, dict) else {"message": str(error)})


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

    def complete(self, prompt: str | list, **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._async.complete(prompt, **params))

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        return self._loop.run_until_complete(self._async.chat(messages, **params))

    def stream(self, prompt: str | list, **params: Any) -> Iterator[dict[str, Any]]:
        chunks = self._async.stream(prompt, **params)
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(chunks.aclose())
