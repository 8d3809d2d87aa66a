"""The rows that decode together: the live sequences of every request in the batch, in the order of
their rows in one KV cache. A sequence joins after its prefill, and its rows leave the cache as they
finish or when its request is cancelled."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from server.engine.kvcache import KVCache
from server.engine.sequence import Sequence

# a row that finished in a step: its sequence, its choice, its row in the step's cache, that cache
Finished = Callable[[Sequence, int, int, KVCache], None]


class Batch:
    def __init__(self) -> None:
        self.sequences: list[Sequence] = []
        self.cache: KVCache | None = None

    def __bool__(self) -> bool:
        return bool(self.sequences)

    @property
    def rows(self) -> int:
        return sum(len(s.live) for s in self.sequences)

    def tokens(self) -> list[int]:
        """The next token of every live row, in cache order: what the next decode step feeds."""
        return [t for s in self.sequences for t in s.tokens]

    def add(self, sequence: Sequence, cache: KVCache) -> None:
        """A sequence whose first tokens are decided joins with the cache of its live rows."""
        self.sequences.append(sequence)
        self.cache = cache if self.cache is None else self.cache.join(cache)

    def advance(self, logits: np.ndarray, cache: KVCache, finished: Finished | None = None) -> None:
        """After a decode step ([rows, V] logits, the cache it returned): each sequence decides its rows'
        next tokens, and the rows that finished leave (`finished` sees each one first: the sequence, its
        choice and its row in `cache`)."""
        keep: list[int] = []
        still: list[Sequence] = []
        for sequence, first, width in self._spans():
            before = list(sequence.live)
            kept = sequence.advance(logits[first : first + width])
            if finished is not None and len(kept) < width:
                for row in set(range(width)) - set(kept):
                    finished(sequence, before[row], first + row, cache)
            keep.extend(first + k for k in kept)
            if kept:
                still.append(sequence)
        self._keep(still, keep, cache)

    def remove(self, leaving: list[Sequence]) -> None:
        """Drop these sequences' rows (their requests are gone) before the next step."""
        keep: list[int] = []
        still: list[Sequence] = []
        for sequence, first, width in self._spans():
            if not any(sequence is s for s in leaving):
                keep.extend(range(first, first + width))
                still.append(sequence)
        if self.cache is not None:
            self._keep(still, keep, self.cache)

    def _spans(self) -> Iterator[tuple[Sequence, int, int]]:
        """Each sequence with its first row in the cache and its number of live rows, as they are before
        the caller advances it."""
        first = 0
        for sequence in self.sequences:
            width = len(sequence.live)
            yield sequence, first, width
            first += width

    def _keep(self, sequences: list[Sequence], rows: list[int], cache: KVCache) -> None:
        self.sequences = sequences
        if not rows:
            self.cache = None
        else:
            self.cache = cache.keep(rows) if len(rows) < cache.batch else cache
