"""The API in front of one or many Triton servers: gRPC streaming through tritonclient's asyncio client.

The API keeps each model's prompt side (manifest and tokenizer from the same model_repository that
Triton serves): it tokenises and trims, so a request is refused with its proper 4xx before anything
is sent. Triton's model (server/triton/model.py) runs the engine and streams events back
(server/triton/wire.py). A health task asks every server, every second, which models it has ready;
requests go round-robin over the servers that have the model, and one that fails before its first
event is retried on the next. No server ready, or one dying mid-request, is a 503 with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as grpc_aio
from tritonclient.utils import InferenceServerException

from server.backends.base import BackendUnavailable, BatchLoad, ModelStatus, Placement
from server.backends.prompt_sides import PromptSides
from server.engine import CacheStats, Delta, Prompt, Prompter, ReusePolicy, SamplingParams, Usage
from server.models import store
from server.settings import Settings
from server.triton import wire

log = logging.getLogger("slipstream.triton")

HEALTH_INTERVAL_S = 1.0
# what a server that is down, restarting or dying looks like from the client
_TRANSPORT_ERRORS = (InferenceServerException, grpc.RpcError, OSError)
_HEALTH_TIMEOUT_S = 2.0
_CANCEL_S = 30.0  # for telling the model that a request's client went away


class TritonUnavailable(BackendUnavailable):
    """No Triton server could run the request (down, not ready, or died during it)."""


class TritonBackend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.names: list[str] = list(dict.fromkeys(settings.model))
        self.urls: list[str] = list(dict.fromkeys(settings.triton_url))
        self._sides = PromptSides(settings.model_repository, self.names)
        self._clients: dict[str, grpc_aio.InferenceServerClient] = {}
        self._telling: set[asyncio.Task[None]] = set()
        self._has: dict[str, set[str]] = {url: set() for url in self.urls}  # url -> models it has ready
        self._down: dict[str, str] = {url: "not asked yet" for url in self.urls}  # url -> why it is not usable
        self._turn = itertools.count()
        self._health: asyncio.Task[None] | None = None

    # --- models ---

    async def load(self) -> None:
        await self._sides.load()
        await self._poll()
        self._health = asyncio.create_task(self._watch())

    def _serves(self, name: str) -> bool:
        return any(name in models for models in self._has.values())

    def status(self, name: str) -> ModelStatus:
        """ready (a Triton server has it ready), loading (not yet: no server has it), or failed."""
        return self._sides.status(name, self._serves(name))

    @property
    def ready(self) -> bool:
        return all(self.status(n) == "ready" for n in self.names)

    async def acquire(self, name: str) -> Prompter:
        return self._sides.acquire(name, self._serves(name), lambda: f"no Triton server has model {name!r} ready: {self._why_not(name)}")

    def manifest(self, name: str) -> store.Manifest | None:
        return self._sides.manifest(name)

    def batch_load(self, name: str) -> BatchLoad | None:
        return None  # the batch lives inside tritonserver: its own metrics (port 8002) show it

    def cache_stats(self, name: str) -> CacheStats | None:
        return None  # so does the engine's prefix cache

    def placement(self) -> Placement | None:
        return None

    def reuse(self, name: str) -> ReusePolicy | None:
        return None  # measured inside tritonserver

    # --- health ---

    def _client(self, url: str) -> grpc_aio.InferenceServerClient:
        if url not in self._clients:
            self._clients[url] = grpc_aio.InferenceServerClient(url)
        return self._clients[url]

    async def _poll(self) -> None:
        await asyncio.gather(*(self._ask(url) for url in self.urls))

    async def _ask(self, url: str) -> None:
        client = self._client(url)
        try:
            if not await asyncio.wait_for(client.is_server_ready(), _HEALTH_TIMEOUT_S):
                raise TritonUnavailable("server not ready")
            ready = [await asyncio.wait_for(client.is_model_ready(n), _HEALTH_TIMEOUT_S) for n in self.names]
        except (TimeoutError, *_TRANSPORT_ERRORS, TritonUnavailable) as exc:
            if url not in self._down or self._has[url]:
                log.warning("Triton at %s is not usable: %s", url, _reason(exc))
            self._has[url], self._down[url] = set(), _reason(exc)
            return
        if url in self._down:
            log.info("Triton at %s is up", url)
        self._has[url] = {n for n, ok in zip(self.names, ready, strict=True) if ok}
        self._down.pop(url, None)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._poll()

    def _why_not(self, name: str) -> str:
        return "; ".join(f"{url}: {self._down.get(url) or f'model {name!r} not ready'}" for url in self.urls)

    # --- generation ---

    async def generate(self, name: str, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Delta | Usage, None]:
        """The request's events from the first Triton server that takes it: servers that have the model
        ready, in turn; one that fails before its first event is marked down and the next one tried."""
        ready = [url for url in self.urls if name in self._has[url]]
        if not ready:
            raise TritonUnavailable(f"no Triton server has model {name!r} ready: {self._why_not(name)}")
        start = next(self._turn) % len(ready)
        failures = []
        for url in ready[start:] + ready[:start]:
            started = False
            try:
                # closed here, not left to the garbage collector: a client gone mid-stream cancels its
                # Triton request at once (an inner generator a loop left is finalised whenever it is collected)
                async with contextlib.aclosing(self._stream(url, name, prompt, params)) as events:
                    async for event in events:
                        started = True
                        yield event
                return
            except _TRANSPORT_ERRORS as exc:
                if started:  # part of the answer is out: another server cannot take over
                    raise TritonUnavailable(f"Triton at {url} failed during the request: {_reason(exc)}") from exc
                failures.append(f"{url}: {_reason(exc)}")
                self._has[url], self._down[url] = set(), _reason(exc)
                log.warning("Triton at %s failed a request, trying the next: %s", url, _reason(exc))
        raise TritonUnavailable(f"every Triton server failed the request: {'; '.join(failures)}")

    async def _stream(self, url: str, name: str, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Delta | Usage, None]:
        request_id = uuid.uuid4().hex
        inputs = [_string_input("prompt", wire.dump_prompt(prompt)), _string_input("sampling_parameters", wire.dump_params(params))]

        async def requests() -> AsyncIterator[dict]:
            yield {"model_name": name, "inputs": inputs, "request_id": request_id}

        # the model's last event is the usage (or an error): Triton's final flag then comes without a
        # response (the asyncio client cannot ask for an empty final one), so the usage ends the stream
        responses = self._client(url).stream_infer(requests())
        ended = broken = False
        try:
            async for result, error in responses:
                if error is not None:
                    broken = True
                    raise error
                try:
                    event = wire.load_event(result.as_numpy("event").reshape(-1)[0].decode())
                except wire.RemoteError as exc:
                    ended = True  # the model ended the request itself: its engine's exception, as in process
                    raise exc.local() from exc
                if isinstance(event, Usage):
                    ended = True
                yield event
                if ended:
                    break
            else:
                raise TritonUnavailable(f"Triton at {url} ended the stream before the request's end")
        except _TRANSPORT_ERRORS:
            broken = True
            raise
        finally:
            if not ended:  # a client gone mid-stream (or this stream broken)
                responses.cancel()
                if not broken:
                    # Triton marks a cancelled stream's requests cancelled only now and then under
                    # concurrent streams (a dropped request then decoded to its end): the model is also
                    # told on a stream of its own, which the leaving client's cancellation cannot cut
                    self._tell_cancelled(url, name, request_id)
        # the request is over: let Triton close the stream itself (cancelling a stream that is ending
        # crashed tritonserver 2.51 under concurrent streams)
        async for _result, _error in responses:
            pass

    def _tell_cancelled(self, url: str, name: str, request_id: str) -> None:
        cancel = [_string_input("prompt", "{}"), _string_input("sampling_parameters", wire.dump_cancel(request_id))]

        async def requests() -> AsyncIterator[dict]:
            yield {"model_name": name, "inputs": cancel, "request_id": f"{request_id}-cancel"}

        async def send() -> None:
            try:
                async with asyncio.timeout(_CANCEL_S):
                    async for _result, _error in self._client(url).stream_infer(requests()):
                        pass  # the model answers with the final flag only: the stream ends then
            except Exception as exc:  # noqa: BLE001 - the request's own end still comes, later
                log.warning("could not tell Triton at %s of a client gone: %s", url, _reason(exc))

        task = asyncio.get_running_loop().create_task(send())
        self._telling.add(task)  # held until done: a task nobody references may be collected mid-way
        task.add_done_callback(self._telling.discard)

    def close(self) -> None:
        if self._health is not None:
            self._health.cancel()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                asyncio.get_running_loop().create_task(client.close())
            except RuntimeError:  # no loop left: the process is ending
                pass


def _string_input(name: str, value: str) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput(name, [1], "BYTES")
    tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
    return tensor


def _reason(exc: BaseException) -> str:
    if isinstance(exc, InferenceServerException):
        return exc.message() or str(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
