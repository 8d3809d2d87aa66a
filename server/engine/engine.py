"""The decode loop: prompt ids in, a stream of text deltas out, one per choice per step.

Four calls make it, and the scheduler (many requests) and `generate` (one) make the same ones:

    pending = engine.start(prompt, params)           the longest cached prefix of the prompt, as its past
    engine.prefill(pending)                          one chunk of the rest (until pending.remaining is 0)
    sequence, cache = engine.first_tokens(pending)   echo, each row's first token
    batch.add(sequence, cache)                       its live rows join the batch
    engine.step(batch)                               one decode step for every live row of the batch

A prompt is prefilled in chunks of at most `prefill_chunk_tokens`, cut at the same absolute positions
whatever is cached or running, and a cached prefix is reused up to a multiple of the kernels' tile
(server/engine/reuse_grid.py measures it at load), so that a prompt's numbers are the same bits warm
or cold, alone or under traffic; or, not exact, to the token. The prefix cache keeps each prompt's
keys and values for the next request (and, not exact, each finished row's: its ReusePolicy says).
n samples (or best_of) share one prefill: the one-row KV cache is copied into n rows. A finished row
leaves the batch at once. A row decoding alone that asked for `speculative`, or brought a prediction, has its step verify a
draft too (server/engine/speculator.py; `_verify`), and gives back (`KVCache.rewind`) what its
decisions did not confirm.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from server.engine.batch import Batch, Finished
from server.engine.events import Delta, Usage
from server.engine.kvcache import KVCache
from server.engine.prefix_cache import CacheStats, PrefixCache, common_prefix
from server.engine.prompt_scores import PromptScores
from server.engine.prompts import Prompt, Prompter
from server.engine.reuse_grid import ReusePolicy, measure
from server.engine.runner import Runner
from server.engine.sampler import Sampler
from server.engine.sampling import SamplingParams
from server.engine.sequence import Sequence
from server.engine.speculator import Draft, Speculator
from server.models.store import Manifest, model_dir

log = logging.getLogger("slipstream.engine")

# The prefix cache must hold at least a prompt this long (or the whole context) to be worth having.
MIN_CACHED_PROMPT = 2048


@dataclass
class Prefill:
    """A prompt on its way in: the past it has so far (a cached prefix, then the chunks prefilled)."""

    prompt: Prompt
    params: SamplingParams
    cache: KVCache | None
    done: int  # prompt positions in `cache`
    cached: int  # of them, reused from the prefix cache
    scored: PromptScores | None  # every prefilled position's score of the next token, when echo scores the prompt
    last: np.ndarray | None = None  # [1, V]: the last prompt position's logits, once all is prefilled

    @property
    def remaining(self) -> int:
        return len(self.prompt.ids) - self.done


class Engine:
    """A model's prompt side (its Prompter), its ONNX Runtime session, its prefix cache and how that is
    reused. `Engine.load` makes one from the model store."""

    def __init__(
        self, prompter: Prompter, runner: Runner, prefix_cache: PrefixCache | None, reuse: ReusePolicy, prefill_chunk_tokens: int = 512
    ) -> None:
        self.prompter = prompter
        self.manifest = prompter.manifest
        self.runner = runner
        self.prefix_cache = prefix_cache
        self.reuse = reuse
        grid = reuse.grid
        self.prefill_chunk_tokens = -(-prefill_chunk_tokens // grid) * grid  # a whole number of tiles
        self.cache_stats = prefix_cache.stats if prefix_cache is not None else CacheStats(0)  # 0: off
        self.speculator = Speculator()  # drafts, the editor's history per salt, counters by drafter
        self.sampler = Sampler(runner.threads)  # a step's rows sampled on the session's threads, between runs

    @classmethod
    def load(
        cls,
        repository: Path,
        name: str,
        threads: int,
        device: str = "cpu",
        prefix_cache_mb: int = 0,
        prefill_chunk_tokens: int = 512,
        reuse_grid: int | None = None,
    ) -> Engine:
        """The model `name` of the store at `repository`, with a prefix cache of prefix_cache_mb (0: off).
        reuse_grid: reuse cached prefixes to this many positions, not exactly; None, exactly: on the
        finest grid that gives a cold prefill's bits on this machine (measured now, server/engine/reuse_grid.py)."""
        prompter = Prompter(repository, name)
        runner = Runner(model_dir(repository, name) / prompter.manifest.onnx_file, threads, device=device)
        prefix_cache = _prefix_cache(prompter.manifest, runner, prefix_cache_mb)
        if prefix_cache is None or reuse_grid is not None:
            reuse = ReusePolicy(reuse_grid or 1, exact=False)
        else:

            def probe(policy: ReusePolicy | None) -> Engine:  # the probe's prefixes in a cache of their own
                return cls(
                    prompter, runner, None if policy is None else PrefixCache(1 << 40), policy or ReusePolicy(), prefill_chunk_tokens
                )

            reuse = measure(probe, prompter.manifest)
        return cls(prompter, runner, prefix_cache, reuse, prefill_chunk_tokens)

    def generate(self, prompt: Prompt, params: SamplingParams, cancel: threading.Event | None = None) -> Iterator[Delta | Usage]:
        """Yield Deltas as tokens are decided, then one Usage: one request on its own, in a batch of its
        own. Stops early, yielding nothing more, when `cancel` is set (the client went away)."""
        cancel = cancel or threading.Event()
        pending = self.start(prompt, params)
        while pending.remaining:
            if cancel.is_set():
                return
            self.prefill(pending)
        sequence, cache = self.first_tokens(pending)
        batch = Batch()
        if cache is not None:
            batch.add(sequence, cache)
        yield from sequence.take()
        while batch:
            if cancel.is_set():
                return
            self.step(batch)
            yield from sequence.take()

    def start(self, prompt: Prompt, params: SamplingParams) -> Prefill:
        """The prompt's past to prefill on: its longest prefix in the prefix cache (none when echo scores
        the prompt, which needs every position's logits, or the request opts out)."""
        scored = params.echo and params.logprobs is not None
        if self.prefix_cache is None or not prompt.cache_prompt or scored:
            return Prefill(prompt, params, None, 0, 0, PromptScores(prompt.ids, params.logprobs or 0) if scored else None)
        cached, runs = self.prefix_cache.lookup(prompt.cache_salt, prompt.ids, self.reuse.grid, leave=self.reuse.leave)
        if not cached:
            return Prefill(prompt, params, None, 0, 0, None)
        wanted, salt = np.asarray(prompt.ids[:cached], dtype=np.int64), prompt.cache_salt

        def already(label: object) -> int:  # of the buffers a request alone in its batch left
            return common_prefix(label.ids, wanted) if isinstance(label, _Held) and label.salt == salt else 0

        past = self.runner.holding(runs, len(prompt.ids) + min(params.max_tokens, 256), already)  # room to decode in
        return Prefill(prompt, params, past, cached, cached, None)

    def prefill(self, pending: Prefill) -> int:
        """Prefill the prompt's next chunk (up to the next multiple of prefill_chunk_tokens) on top of its
        past; returns how many tokens. After the last chunk the prompt's keys and values go into the
        prefix cache."""
        end = (pending.done // self.prefill_chunk_tokens + 1) * self.prefill_chunk_tokens
        ids = pending.prompt.ids[pending.done : end]
        logits, cache = self.runner.prefill(ids, all_logits=pending.scored is not None, past=pending.cache)
        pending.cache, pending.done = cache, pending.done + len(ids)
        if pending.scored is not None:
            pending.scored.add(logits)
        if not pending.remaining:
            pending.last = logits[-1:]
            self._keep(pending.prompt, self.reuse.reusable(pending.prompt.ids), cache, 0)
        return len(ids)

    def first_tokens(self, pending: Prefill) -> tuple[Sequence, KVCache | None]:
        """Decide each row's first token from the prefilled prompt: the sequence (its first events ready
        to take) and the KV cache of its rows still going, or None when none is."""
        assert pending.last is not None and pending.cache is not None, "prefill the whole prompt first"
        prompt, params = pending.prompt, pending.params
        rows = params.best_of or params.n
        sequence = Sequence(self.prompter, prompt, params, self.sampler, pending.cached)
        if params.echo:
            sequence.echo(pending.scored)
        if params.max_tokens == 0:  # echo-only scoring: nothing to generate
            sequence.close_all("length")
            return sequence, None
        kept = sequence.advance(np.repeat(pending.last, rows, axis=0))
        if not kept:
            return sequence, None
        cache = pending.cache.repeat(rows) if rows > 1 else pending.cache
        return sequence, cache.keep(kept) if len(kept) < rows else cache

    def step(self, batch: Batch) -> None:
        """One decode step for every live row of the batch: each row's next token (a row decoding alone
        that asked for speculation: its next token and as many of its draft's as it confirms); finished
        rows leave (what they generated kept in the prefix cache first)."""
        assert batch.cache is not None, "a batch with live rows has their cache"
        alone = batch.sequences[0] if batch.rows == 1 else None
        choice = alone.live[0] if alone is not None else 0
        finished = self._finished if self.prefix_cache is not None and self.reuse.keeps_generated else None
        draft = self.speculator.draft(alone) if alone is not None else None
        before = list(batch.sequences)
        if draft is not None:
            cache = self._verify(batch, draft, finished)
        else:
            logits, cache = self.runner.decode(batch.tokens(), batch.cache)
            batch.advance(logits, cache, finished)
        for sequence in before:
            if sequence.done:
                self.speculator.remember(sequence)
        if alone is not None and not batch and self.prefix_cache is not None and alone.prompt.cache_prompt:
            # the last row's buffers go back to the pool holding its prompt (and what it generated, where
            # the policy keeps that): the next request that starts the same way takes them and copies none of it
            ids = alone.held(choice) if self.reuse.keeps_generated else self.reuse.reusable(alone.prompt.ids)
            cache.label(_Held(alone.prompt.cache_salt, np.asarray(ids, dtype=np.int64)))

    @property
    def drafted(self) -> int:
        """Draft tokens verified so far, every drafter's."""
        return sum(self.speculator.drafted.values())

    @property
    def accepted(self) -> int:
        """Of them, those the rows' own decisions confirmed."""
        return sum(self.speculator.accepted.values())

    def _verify(self, batch: Batch, draft: Draft, finished: Finished | None) -> KVCache:
        """One step over the row's next token and its draft; the row then decides token after token from
        the step's logits, each as a one-token step would (its sampler, its generator, its stop strings),
        while what it decides equals the draft; the positions after the last one used are rewound."""
        inputs = [*batch.tokens(), *draft.tokens]
        assert batch.cache is not None, "a batch with live rows has their cache"
        logits, cache = self.runner.forward(np.asarray([inputs], dtype=np.int64), batch.cache, keep=len(inputs))
        sequence, used = batch.sequences[0], 0
        for position in range(len(inputs)):
            batch.advance(logits[:, position], cache, finished)
            used += 1
            if not batch or position == len(draft.tokens) or sequence.tokens[0] != draft.tokens[position]:
                break
        self.speculator.settle(sequence, draft, used - 1)
        if batch.cache is not None:
            batch.cache = batch.cache.rewind([len(inputs) - used])
        return cache

    def _finished(self, sequence: Sequence, choice: int, row: int, cache: KVCache) -> None:
        self._keep(sequence.prompt, sequence.held(choice), cache, row)

    def _keep(self, prompt: Prompt, ids: list[int], cache: KVCache, row: int) -> None:
        if self.prefix_cache is not None and prompt.cache_prompt:
            self.prefix_cache.insert(prompt.cache_salt, ids, lambda start, end: cache.read(row, start, end))


def _prefix_cache(manifest: Manifest, runner: Runner, megabytes: int) -> PrefixCache | None:
    budget = megabytes << 20
    if not budget:
        return None
    least = min(manifest.context_length, MIN_CACHED_PROMPT) * runner.kv_bytes_per_token
    if budget < least:
        log.warning(
            "prefix cache off for %s: prefix_cache_mb=%d holds less than one prompt of %d tokens (%.0f MB)",
            manifest.name,
            megabytes,
            least // runner.kv_bytes_per_token,
            least / 2**20,
        )
        return None
    return PrefixCache(budget)


@dataclass(frozen=True)
class _Held:
    """What a one-row cache's row held when it was dropped: these ids' keys and values, for this salt."""

    salt: str
    ids: np.ndarray


__all__ = ["Engine", "Prefill"]
