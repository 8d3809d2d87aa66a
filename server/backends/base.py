"""What the API asks of a backend, whichever runs the model."""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from server.engine.prompts import Prompt, Prompter
from server.engine.sampling import SamplingParams
from server.models.store import Manifest


class ModelLoading(RuntimeError):
    """The model is not ready yet (loading, or its Triton server is not up): 503, retry later."""


class ModelFailed(RuntimeError):
    """The model cannot be served (its export or load failed): 503 with the reason."""


class BackendUnavailable(RuntimeError):
    """The backend could not run a request it had accepted (a Triton server down or gone): 503."""


class Backend(Protocol):
    names: list[str]

    async def load(self) -> None: ...

    def status(self, name: str) -> str: ...

    @property
    def ready(self) -> bool: ...

    async def acquire(self, name: str) -> Prompter:
        """The model's prompt side, once the model can take requests; ModelLoading / ModelFailed if not."""
        ...

    def manifest(self, name: str) -> Manifest | None: ...

    def queue_full(self, name: str) -> bool: ...

    def load_now(self, name: str) -> tuple[int, int] | None:
        """(rows decoding, requests waiting) now, where this process runs the batch; None elsewhere."""
        ...

    def generate(self, name: str, prompt: Prompt, params: SamplingParams) -> AsyncIterator: ...

    def close(self) -> None: ...
