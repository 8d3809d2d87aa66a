"""The decode loop: prompt ids in, a stream of text deltas out, one per choice per step.

Two calls make it, and the scheduler (many requests) and `generate` (one) make the same ones:

    sequence, cache = engine.start(prompt, params)   prefill, echo, each row's first token
    batch.add(sequence, cache)                       its live rows join the batch
    engine.step(batch)                               one decode step for every live row of the batch

n samples (or best_of) share one prefill: the one-row KV cache is copied into n rows. A finished row
leaves the batch at once.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from server.engine.batch import Batch
from server.engine.events import Delta, Usage
from server.engine.kvcache import KVCache
from server.engine.prompts import Prompt, Prompter
from server.engine.runner import Runner
from server.engine.sampling import SamplingParams
from server.engine.sequence import Sequence
from server.models.store import model_dir


class Engine:
    """A model's prompt side (its Prompter) and its ONNX Runtime session: prompts in, text deltas out."""

    def __init__(self, repository: Path, name: str, threads: int, device: str = "cpu") -> None:
        self.prompter = Prompter(repository, name)
        self.manifest = self.prompter.manifest
        self.runner = Runner(model_dir(repository, name) / self.manifest.onnx_file, threads, device=device)

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event | None = None
    ) -> Iterator[Delta | Usage]:
        """Yield Deltas as tokens are decided, then one Usage: one request on its own, in a batch of its
        own. Stops early, yielding nothing more, when `cancel` is set (the client went away)."""
        cancel = cancel or threading.Event()
        sequence, cache = self.start(prompt, params)
        batch = Batch()
        if cache is not None:
            batch.add(sequence, cache)
        yield from sequence.take()
        while batch:
            if cancel.is_set():
                return
            self.step(batch)
            yield from sequence.take()

    def start(self, prompt: Prompt, params: SamplingParams) -> tuple[Sequence, KVCache | None]:
        """Prefill the prompt and decide each row's first token: the sequence (its first events ready to
        take) and the KV cache of its rows still going, or None when none is."""
        rows = params.best_of or params.n
        scored = params.echo and params.logprobs is not None
        logits, cache = self.runner.prefill(prompt.ids, all_logits=scored)  # logits: [T or fewer, V]
        sequence = Sequence(self.prompter, prompt, params)
        if params.echo:
            sequence.echo(logits)
        if params.max_tokens == 0:  # echo-only scoring: nothing to generate
            sequence.close_all("length")
            return sequence, None
        kept = sequence.advance(np.repeat(logits[-1:], rows, axis=0))
        if not kept:
            return sequence, None
        cache = cache.repeat(rows) if rows > 1 else cache
        return sequence, cache.keep(kept) if len(kept) < rows else cache

    def step(self, batch: Batch) -> None:
        """One decode step for every live row of the batch: each row's next token; finished rows leave."""
        assert batch.cache is not None, "a batch with live rows has their cache"
        logits, cache = self.runner.decode(batch.tokens(), batch.cache)
        batch.advance(logits, cache)


__all__ = ["Engine"]
