"""What the API asks of a backend, whichever runs the model."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from server.engine import CacheStats, Delta, Prompt, Prompter, ReusePolicy, SamplingParams, Usage
from server.models.store import Manifest

# ready: in memory (or on a Triton server); standby: exported, loaded by its first request (load = lazy)
ModelStatus = Literal["ready", "standby", "loading", "failed"]
SERVING: tuple[ModelStatus, ...] = ("ready", "standby")  # the statuses in which requests are served


class ModelLoading(RuntimeError):
    """The model is not ready yet (loading, or its Triton server is not up): 503, retry later."""


class ModelFailed(RuntimeError):
    """The model cannot be served (its export or load failed): 503 with the reason."""


class BackendUnavailable(RuntimeError):
    """The backend could not run a request it had accepted (a Triton server down or gone): 503."""


@dataclass(frozen=True)
class BatchLoad:
    """A model's batch as /metrics shows it."""

    rows: int  # decoding now (in the last decode step; 0 when idle)
    waiting: int  # requests waiting to be admitted
    rows_decoded: int  # every row of every decode step so far, finished or cancelled later: the work done
    drafted: Mapping[str, int] = field(default_factory=dict)  # speculation's draft tokens verified, by drafter
    accepted: Mapping[str, int] = field(default_factory=dict)  # of them, those the rows' own decisions confirmed
    running: int = 0  # requests whose rows are decoding
    max_rows: int = 1  # rows the batch takes at most (max_batch_rows)


@dataclass(frozen=True)
class Placement:
    """Where the engine runs when it runs as replicas (Ray Serve), for /ready and /metrics."""

    replicas: Mapping[str, int]  # the engine deployment's replicas by state (RUNNING, STARTING, ...)
    status: str  # the deployment's (HEALTHY, UPDATING, UNHEALTHY, ...)
    message: str  # why, when it is not healthy
    routed: Mapping[str, int] = field(default_factory=dict)  # requests each replica took, by "replica (pid N)"
    resumed: int = 0  # requests resumed on another replica after theirs died


class Backend(Protocol):
    names: list[str]

    async def load(self) -> None: ...

    def status(self, name: str) -> ModelStatus: ...

    @property
    def ready(self) -> bool: ...

    async def acquire(self, name: str) -> Prompter:
        """The model's prompt side, once the model can take requests; ModelLoading / ModelFailed if not."""
        ...

    def manifest(self, name: str) -> Manifest | None: ...

    def batch_load(self, name: str) -> BatchLoad | None:
        """The model's batch now, for /metrics; None where the batch lives in another process (Triton's:
        its own metrics show it) or the model has not loaded."""
        ...

    def cache_stats(self, name: str) -> CacheStats | None:
        """The model's prefix-cache counters now (budget 0: off), for /metrics and /v1/models; None where
        the engine runs in another process (Triton) or the model has not loaded."""
        ...

    def reuse(self, name: str) -> ReusePolicy | None:
        """How the model's engine reuses its prefix cache (the grid measured at load), for /v1/models; None
        where the engine runs in another process (Triton) or the model has not loaded."""
        ...

    def placement(self) -> Placement | None:
        """The engine's replicas (Ray Serve); None where the engine is this process or a Triton server."""
        ...

    def generate(self, name: str, prompt: Prompt, params: SamplingParams) -> AsyncGenerator[Delta | Usage, None]:
        """The generation's events; QueueFull (from the model's scheduler) before the first one when the
        model holds max_queue requests already."""
        ...

    def close(self) -> None: ...
