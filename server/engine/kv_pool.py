"""The host buffers of in-place KV caches that are gone, kept for the next one (kvcache.py's SharedBuffers
take theirs from here)."""

from __future__ import annotations

import mmap
import threading
import weakref
from collections.abc import Callable

import numpy as np

# of a free set of buffers' label: how many of the positions wanted its first row holds already
Already = Callable[[object], int]


class BufferPool:
    """Host buffers of in-place caches that are gone, kept for the next one. Memory fresh from the system
    costs a page fault per 4 kB the first time it is written: copying a 900-token SmolLM2 prefix (42 MB)
    into new buffers took 40 ms, into buffers written before 8 ms, and an editor's every request starts
    by such a copy. What a reused buffer held beyond a row's length is left there: GroupQueryAttention
    reads each row's first `length` positions only (checked: the engine's tests give the same bits with
    the rest NaN).

    A set of buffers is one slab, and every array on it (each layer's buffer, every view of one: a
    cache's past(), an OrtValue bound to it) has the slab's _Memory as its base, so the slab comes back
    only when the last of them is gone."""

    def __init__(self, idle: int) -> None:
        self.idle = idle  # at most this many slabs wait for reuse; the oldest beyond are freed
        self._free: list[tuple[np.ndarray, tuple, object]] = []  # (slab, its layout, its label or None)
        self._lock = threading.Lock()  # the scheduler's thread and a direct `generate` may share it

    def take(
        self, like: dict[str, np.ndarray], rows: int, capacity: int, already: Already | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """Buffers of at least `rows` rows and `capacity` positions (at most twice that), shaped per layer
        as `like`'s arrays ([_, kv_heads, _, head_dim]), and how many positions of what the caller wants
        their first row holds already (`already` of their label; 0 for new ones)."""
        first = next(iter(like.values()))
        kind = (tuple(like), first.shape[1], first.shape[3], np.dtype(first.dtype))
        with self._lock:
            fits = [i for i, (_, (k, r, c), _) in enumerate(self._free) if k == kind and rows <= r and capacity <= c <= 2 * capacity]
            held = {i: already(self._free[i][2]) if already is not None and self._free[i][2] is not None else 0 for i in fits}
            best = max(fits, key=lambda i: (held[i], -self._free[i][0].nbytes), default=None)
            found = self._free.pop(best) if best is not None else None
        if found is None:
            slab = _slab(len(like) * rows * first.shape[1] * capacity * first.shape[3], first.dtype)
            layout: tuple = (kind, rows, capacity)
            count = 0
        else:
            slab, layout, _ = found
            assert best is not None  # found came from the pool at best
            count = held[best]
        (names, heads, head_dim, _), rows, capacity = layout
        memory = _Memory(slab)
        finalizer = weakref.finalize(memory, self._give_back, slab, layout, memory.label)
        finalizer.atexit = False  # type: ignore[misc]  # documented (weakref docs); typeshed's __slots__ omit it
        whole = np.asarray(memory)  # it and its views have `memory` as their base
        size = rows * heads * capacity * head_dim
        return {name: whole[i * size : (i + 1) * size].reshape(rows, heads, capacity, head_dim) for i, name in enumerate(names)}, count

    def filled(self, past: dict[str, np.ndarray], capacity: int, rows: int) -> dict[str, np.ndarray]:
        """take(), holding `past` in the first rows and positions."""
        buffers, _ = self.take(past, rows, capacity)
        for k, v in past.items():
            buffers[k][: v.shape[0], :, : v.shape[2]] = v
        return buffers

    @staticmethod
    def label(buffer: np.ndarray, label: object) -> None:
        memory = buffer.base
        while isinstance(memory, np.ndarray):  # a view of the slab's whole array
            memory = memory.base
        assert isinstance(memory, _Memory), "a pooled buffer's base is its slab's _Memory"
        memory.label[0] = label

    def _give_back(self, slab: np.ndarray, layout: tuple, label: list) -> None:
        with self._lock:
            self._free.append((slab, layout, label[0]))
            del self._free[: -self.idle or len(self._free)]


def _slab(count: int, dtype: np.dtype) -> np.ndarray:
    """`count` zeros of `dtype` in an anonymous mapping of their own, in 4 kB pages taken as first written.
    Not np.empty: numpy asks for transparent huge pages on large arrays, so that writing a one-row cache
    (row 0 of each layer's 8-row buffer) touched every layer's 2 MB pages: 178 MB resident instead of 23,
    and 2-3x the time, for a 512-position SmolLM2 slab."""
    return np.frombuffer(mmap.mmap(-1, max(count, 1) * np.dtype(dtype).itemsize), dtype, count)


class _Memory:
    """A slab as the base object of the arrays on it: when it goes, no array on the slab is left."""

    def __init__(self, slab: np.ndarray) -> None:
        self.__array_interface__ = slab.__array_interface__
        self.label: list[object] = [None]  # what the first row holds, said before the last array goes


__all__ = ["Already", "BufferPool"]
