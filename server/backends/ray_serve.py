"""The API as Ray Serve's ingress: it tokenises and trims here (a bad request is refused before any
replica sees it), and streams each generation from an engine replica over a deployment handle, the
router choosing the replica (server/rayserve/router.py).

Failover: a replica that dies mid-stream loses no request. Every delta carries its tokens, so the
ingress knows, per choice, the tokens generated and the text sent; it sends each unfinished choice
again, as its prompt plus those tokens with the rest of max_tokens, to another replica, which goes on
from there (Prompt.resumed), and the client sees one unbroken stream (greedy: the same text). A
request that died before sending anything is sent again whole, as is one whose choices best_of holds
back. After MAX_TRIES replicas it is a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

from server.backends.base import BackendUnavailable, BatchLoad, ModelStatus, Placement
from server.backends.prompt_sides import PromptSides
from server.engine import CacheStats, Delta, Prompt, Prompter, QueueFull, ReusePolicy, SamplingParams, Usage
from server.models import store
from server.rayserve.replica import Item, Refused, Served
from server.settings import Settings

log = logging.getLogger("slipstream.ray")

MAX_TRIES = 4
STATUS_INTERVAL_S = 2.0  # serve.status() costs the controller and this process a little every time
ENGINE = "engine"  # the engine deployment's name in the application (server/rayserve/app.py)


@dataclass
class _Choice:
    ids: list[int] = field(default_factory=list)  # tokens generated so far
    text: str = ""  # text sent, the echoed prompt not included
    done: bool = False
    ended_here: bool = False  # all max_tokens were out when its replica died: the ingress ends it


@dataclass
class _Attempt:
    prompt: Prompt
    params: SamplingParams
    index: int | None  # the original choice this stream's choice 0 is (a resumed choice), None: all, as sent


class RayBackend:
    def __init__(self, settings: Settings, engine: Any, app_name: str) -> None:
        self.settings = settings
        self.names: list[str] = list(dict.fromkeys(settings.model))
        self._engine = engine.options(stream=True)  # a DeploymentHandle to the engine deployment
        self._app = app_name
        self._sides = PromptSides(settings.model_repository, self.names)
        self._placement = Placement(replicas={}, status="starting", message="")
        self._routed: Counter[tuple[str, int]] = Counter()  # (replica, pid) -> requests it took
        self._resumed = 0
        self._watch: asyncio.Task[None] | None = None

    async def load(self) -> None:
        await self._sides.load()
        await self._poll()
        self._watch = asyncio.create_task(self._watching())

    async def _poll(self) -> None:
        from ray import serve

        try:
            status = await asyncio.to_thread(serve.status)
            deployment = status.applications[self._app].deployments[ENGINE]
        except Exception as exc:  # noqa: BLE001 - the controller restarting: say so, try again
            self._placement = replace(self._placement, status="unknown", message=f"{type(exc).__name__}: {exc}")
            return
        replicas = {getattr(state, "value", str(state)): n for state, n in deployment.replica_states.items() if n}
        self._placement = replace(
            self._placement,
            replicas=replicas,
            status=getattr(deployment.status, "value", str(deployment.status)),
            message=deployment.message,
        )

    async def _watching(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            await self._poll()

    # --- models ---

    def _running(self) -> bool:
        return self._placement.replicas.get("RUNNING", 0) > 0

    def status(self, name: str) -> ModelStatus:
        """ready (a replica runs), loading (none yet), or failed (the model's prompt side cannot load)."""
        return self._sides.status(name, self._running())

    @property
    def ready(self) -> bool:
        return all(self.status(n) == "ready" for n in self.names)

    async def acquire(self, name: str) -> Prompter:
        placement = self._placement
        return self._sides.acquire(
            name, self._running(), lambda: f"no engine replica is running yet ({placement.status}: {placement.message or 'starting'})"
        )

    def manifest(self, name: str) -> store.Manifest | None:
        return self._sides.manifest(name)

    def batch_load(self, name: str) -> BatchLoad | None:
        return None  # the batches live in the replicas: Ray's metrics and their routing stats show them

    def cache_stats(self, name: str) -> CacheStats | None:
        return None

    def reuse(self, name: str) -> ReusePolicy | None:
        return None

    def placement(self) -> Placement:
        routed = {f"{replica} (pid {pid})": n for (replica, pid), n in self._routed.items()}
        return replace(self._placement, routed=routed, resumed=self._resumed)

    # --- generation ---

    async def generate(self, name: str, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Delta | Usage, None]:
        from ray.exceptions import ActorUnavailableError, RayActorError

        choices = {i: _Choice() for i in range(params.n)}
        echoed: set[int] = set()  # choices whose echoed prompt (their first delta) was sent
        usages: list[Usage] = []
        attempts = [_Attempt(prompt, params, None)]
        for tries in range(1, MAX_TRIES + 1):
            try:
                async with contextlib.aclosing(_merged([self._stream(name, a) for a in attempts])) as events:
                    async for index, event in events:
                        if isinstance(event, Usage):
                            usages.append(event)
                            continue
                        choice = choices[index]
                        if params.echo and index not in echoed:
                            echoed.add(index)
                            yield replace(event, index=index)  # the echoed prompt: not generated text
                            continue
                        choice.ids += event.token_ids
                        choice.text += event.text
                        choice.done = event.finish_reason is not None
                        yield replace(event, index=index)
                yield _usage(prompt, usages, choices, attempts)
                return
            except (RayActorError, ActorUnavailableError) as exc:
                if tries == MAX_TRIES:
                    raise BackendUnavailable(f"{MAX_TRIES} engine replicas died during the request; the last: {exc}") from exc
                usages.clear()  # a finished choice's tokens are counted from its deltas, the resumed ones' anew
                attempts = self._resume(name, prompt, params, choices, bool(echoed))
                for index, c in choices.items():
                    if c.done and c.ended_here:  # its last token was out: only its end was lost
                        c.ended_here = False
                        yield Delta(index, "", None, "length")
                self._resumed += 1
                log.warning("an engine replica died during a request: resuming %d choice(s) on another", len(attempts))

    def _resume(self, name: str, prompt: Prompt, params: SamplingParams, choices: dict[int, _Choice], echoed: bool) -> list[_Attempt]:
        """What to send again: the whole request when nothing of it was sent (or best_of held it all back),
        else each unfinished choice as its prompt plus its tokens, with the rest of max_tokens."""
        if all(not c.ids and not c.text for c in choices.values()) or (params.best_of or params.n) > params.n:
            for c in choices.values():
                c.ids, c.text, c.done = [], "", False
            return [_Attempt(prompt, replace(params, echo=params.echo and not echoed), None)]
        attempts = []
        tokenizer = self._sides.get(name).tokenizer
        for index, c in choices.items():
            if c.done:
                continue
            ids = list(c.ids)
            # a character split over tokens is left to the next replica to generate again, whole
            while ids and tokenizer.decode(ids, skip_special_tokens=True).endswith("\ufffd"):
                ids.pop()
            rest = params.max_tokens - len(ids)
            if rest <= 0:
                c.done = c.ended_here = True
                continue
            resumed = replace(prompt, ids=prompt.ids + ids, resumed=len(ids), sent=c.text, prediction=[])
            seed = None if params.seed is None else params.seed + index
            attempts.append(_Attempt(resumed, replace(params, n=1, best_of=None, echo=False, max_tokens=rest, seed=seed), index))
            c.ids = ids
        return attempts

    async def _stream(self, name: str, attempt: _Attempt) -> AsyncGenerator[tuple[int, Delta | Usage], None]:
        from ray.serve import context
        from ray.serve.exceptions import BackPressureError

        # A handle call takes its internal request id from the request being served, and Serve's router
        # keys its pending requests by it: two calls of one request at once (choices resumed apart) left
        # one never routed. Each call gets its own (ray 2.60's request context; the version is pinned).
        request = context._get_serve_request_context()
        context._serve_request_context.set(replace(request, _internal_request_id=uuid.uuid4().hex))  # type: ignore[arg-type]
        try:
            stream = self._engine.generate.remote(name, attempt.prompt, attempt.params)
            async with contextlib.aclosing(_items(stream)) as items:
                async for item in items:
                    if isinstance(item, Served):
                        self._routed[(item.replica, item.pid)] += 1
                    elif isinstance(item, Refused):
                        raise item.exception()
                    elif isinstance(item, Usage):
                        yield -1, item
                    else:
                        yield (item.index if attempt.index is None else attempt.index), item
        except BackPressureError as exc:  # past max_ongoing_requests on every replica and max_queued_requests
            raise QueueFull(f"every engine replica is full: {exc}") from exc

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()


async def _items(stream: Any) -> AsyncGenerator[Item, None]:
    try:
        async for batch in stream:  # the replica sends its items in lists (EngineReplica.generate)
            for item in batch:
                yield item
    finally:
        stream.cancel()  # a client gone: the replica's generator is closed, its rows dropped


async def _merged(streams: list[AsyncGenerator[tuple[int, Delta | Usage], None]]) -> AsyncGenerator[tuple[int, Delta | Usage], None]:
    """The streams' items as they come; the first failure ends all."""
    if len(streams) == 1:
        async with contextlib.aclosing(streams[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[int, Delta | Usage] | BaseException | None] = asyncio.Queue()

    async def pump(stream: AsyncGenerator[tuple[int, Delta | Usage], None]) -> None:
        try:
            async with contextlib.aclosing(stream):
                async for got in stream:
                    await queue.put(got)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put(exc)
            return
        await queue.put(None)

    tasks = [asyncio.create_task(pump(s)) for s in streams]
    try:
        ended = 0
        while ended < len(tasks):
            next_item = await queue.get()
            if next_item is None:
                ended += 1
            elif isinstance(next_item, BaseException):
                raise next_item
            else:
                yield next_item
    finally:
        for task in tasks:
            task.cancel()


def _usage(prompt: Prompt, usages: list[Usage], choices: dict[int, _Choice], attempts: list[_Attempt]) -> Usage:
    """The request's usage: the one the engine sent, or, after a failover, the resumed streams' summed
    with what the dead replica generated for choices that had finished."""
    if len(usages) == 1 and attempts and attempts[0].index is None:
        return usages[-1]
    resumed = {a.index for a in attempts}
    earlier = sum(len(c.ids) for i, c in choices.items() if i not in resumed)
    return Usage(
        prompt_tokens=len(prompt.ids),
        completion_tokens=earlier + sum(u.completion_tokens for u in usages),
        prompt_tokens_trimmed=prompt.trimmed,
        cached_tokens=max((u.cached_tokens for u in usages), default=0),
        draft_tokens=sum(u.draft_tokens for u in usages),
        accepted_draft_tokens=sum(u.accepted_draft_tokens for u in usages),
    )
