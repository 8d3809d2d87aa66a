"""Past keys and values of a batch of rows, behind one interface whatever holds them.

    cache.keep(rows)      rows leave (the others move up, in their order)
    cache.join(other)     rows join (other's after self's)
    cache.repeat(n)       n copies of a one-row cache (n samples of one prompt, one prefill)
    cache.read(row, a, b) a row's held positions a..b, copied out to host arrays
    cache.rewind(drops)   each row forgets its last drops[row] positions (a verify step's rejected drafts)
    HostCache.holding(a)  a one-row cache holding given positions: a past to prefill on top of
    cache.label(what)     what a one-row cache's row holds, for the next holding() to find in its buffers
    cache.past()          every row's positions as host arrays, what a graph that copies is fed

mask[b, j] is 1 where row b holds a token at cache position j. Graphs that take position_ids
(optimum's) attend through the mask, so a row's tokens may have holes (a short row joined to a
longer batch); graphs that do not (onnxruntime-genai's GroupQueryAttention) derive each row's
length and positions from the mask's sum, so there every row is packed at the start.

Where the keys and values live:
- HostCache: numpy arrays exactly `length` long. The graph returns past and new tokens concatenated
  (a copy of the whole cache per step), and the result is the next HostCache.
- SharedBuffers: host buffers with room beyond `length` and rows to spare, which a
  GroupQueryAttention graph reads and writes in place (bound as both past and present): a step copies
  nothing, a row joins by being written into the next spare row, rows leave by moving down.
- DeviceBuffers: the same in OrtValues on the runner's device (CUDA), so that a step moves nothing
  between host and GPU but ids and logits; rows joining or leaving are rearranged on the host, once
  per such event, not per step.
SharedBuffers and DeviceBuffers are InPlace: the runner adopts any cache into one before a step
that writes in place, and a step that would overflow them moves the cache into buffers twice as large.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from server.engine.kv_pool import Already, BufferPool

_CAPACITY_STEP = 128  # in-place buffers grow in whole multiples of this many positions


class KVCache(ABC):
    mask: np.ndarray  # [B, length] int64

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    def tokens(self) -> np.ndarray:
        """[B] tokens each row holds: the position of its next token."""
        return self.mask.sum(axis=1)

    @abstractmethod
    def past(self) -> dict[str, np.ndarray]:
        """past_key_values.N.key/value -> [B, kv_heads, length, head_dim] host arrays (views where the
        cache is in host memory, a copy from a device)."""

    @abstractmethod
    def keep(self, rows: list[int]) -> KVCache:
        """The given rows, in that order, trimmed to the longest of them (positions no row holds are dropped)."""

    @abstractmethod
    def join(self, other: KVCache) -> KVCache:
        """Both batches in one (self's rows first), the shorter padded at the end with empty positions."""

    def repeat(self, n: int) -> KVCache:
        return HostCache({k: np.repeat(v, n, axis=0) for k, v in self.past().items()}, np.repeat(self.mask, n, axis=0))

    def label(self, label: object) -> None:  # noqa: B027 - a default that does nothing, on purpose
        """Say what the first row holds, as a one-row cache is dropped: in-place buffers go back to a pool,
        and a prefix that `holding` finds already there is not copied again. Others hold nothing to find."""

    def read(self, row: int, start: int = 0, end: int | None = None) -> dict[str, np.ndarray]:
        """Positions [start, end) of those that `row` holds (default all), packed: [1, kv_heads, end - start,
        head_dim] copies, whatever the layout (holes or packed) and wherever the cache lives."""
        held = np.flatnonzero(self.mask[row])[start:end]
        return {k: np.ascontiguousarray(v[row : row + 1, :, held]) for k, v in self.past().items()}

    def rewind(self, drops: list[int]) -> KVCache:
        """Each row b forgets its last drops[b] held positions (the draft tokens a verify step rejected):
        masked out, and the positions no row holds any more trimmed, so that the next step writes right
        after what each row keeps (a packed row stays packed). Nothing is copied: the values stay where
        they are until a step writes over them."""
        mask = self.mask.copy()
        for row, drop in enumerate(drops):
            if drop:
                held = np.flatnonzero(mask[row])
                if drop > held.size:
                    raise ValueError(f"row {row} holds {held.size} positions: it cannot drop {drop}")
                mask[row, held[held.size - drop :]] = 0
        mask, end = _trimmed(mask)
        return self._masked(mask, end)

    @abstractmethod
    def _masked(self, mask: np.ndarray, end: int) -> KVCache:
        """The same storage holding what `mask` ([B, end], the first `end` positions) says."""


@dataclass
class HostCache(KVCache):
    tensors: dict[str, np.ndarray]  # [B, kv_heads, length, head_dim]
    mask: np.ndarray

    @classmethod
    def empty(cls, names: list[str], batch: int, heads: int, head_dim: int, dtype: type) -> HostCache:
        shape = (batch, heads, 0, head_dim)
        return cls({name: np.zeros(shape, dtype) for name in names}, np.zeros((batch, 0), dtype=np.int64))

    @classmethod
    def holding(cls, positions: dict[str, np.ndarray]) -> HostCache:
        """A one-row cache holding the given [1, kv_heads, T, head_dim] positions (as read out by `read`)."""
        length = next(iter(positions.values())).shape[2]
        return cls(dict(positions), np.ones((1, length), dtype=np.int64))

    def past(self) -> dict[str, np.ndarray]:
        return self.tensors

    def keep(self, rows: list[int]) -> HostCache:
        mask, end = _trimmed(self.mask[rows])
        return HostCache({k: np.ascontiguousarray(v[rows, :, :end]) for k, v in self.tensors.items()}, mask)

    def _masked(self, mask: np.ndarray, end: int) -> HostCache:
        return HostCache({k: v[:, :, :end] for k, v in self.tensors.items()}, mask)

    def join(self, other: KVCache) -> HostCache:
        mask = _joined(self.mask, other.mask)
        theirs = other.past()
        tensors = {}
        for k, v in self.tensors.items():
            out = np.zeros((mask.shape[0], v.shape[1], mask.shape[1], v.shape[3]), v.dtype)
            out[: self.batch, :, : self.length] = v
            out[self.batch :, :, : other.length] = theirs[k]
            tensors[k] = out
        return HostCache(tensors, mask)


class InPlace(KVCache):
    """Buffers that a step writes the new tokens' keys and values into, with room beyond `length`."""

    @property
    @abstractmethod
    def capacity(self) -> int: ...

    @classmethod
    @abstractmethod
    def adopt(cls, cache: KVCache, length: int, device: str | None) -> InPlace:
        """`cache` in buffers of this kind with room for `length` positions: itself when it already is
        one with room, else a copy."""

    @abstractmethod
    def bind(self, binding: ort.IOBinding, present_to_past: dict[str, str]) -> None:
        """Bind each buffer as its past input and as the matching present output."""

    @abstractmethod
    def written(self, mask: np.ndarray) -> InPlace:
        """The same buffers after a step wrote into them: now holding what `mask` says."""

    def _masked(self, mask: np.ndarray, end: int) -> InPlace:
        return self.written(mask)  # the buffers keep their capacity; the next step writes over the rest


@dataclass
class SharedBuffers(InPlace):
    # [rows to spare, kv_heads, capacity, head_dim]; the cache's B rows are the first B (views of them
    # stay C-contiguous, which ONNX Runtime binds without a copy)
    buffers: dict[str, np.ndarray]  # from the pool: back to it when no array on them is left
    mask: np.ndarray
    found: int = 0  # of the positions holding() was asked for, those it found in place (not copied)

    @property
    def capacity(self) -> int:
        return next(iter(self.buffers.values())).shape[2]

    @property
    def spare_rows(self) -> int:
        return next(iter(self.buffers.values())).shape[0]

    def past(self) -> dict[str, np.ndarray]:
        return {k: v[: self.batch, :, : self.length] for k, v in self.buffers.items()}

    @classmethod
    def adopt(cls, cache: KVCache, length: int, device: str | None = None) -> SharedBuffers:
        if isinstance(cache, SharedBuffers):
            if cache.capacity >= length:
                return cache
            capacity, rows = _grown(length, cache.capacity), cache.spare_rows
        else:
            capacity, rows = _grown(length, cache.length), _spare(cache.batch)
        return cls(_POOL.filled(cache.past(), capacity, rows), cache.mask)

    def keep(self, rows: list[int]) -> SharedBuffers:
        mask, end = _trimmed(self.mask[rows])
        if all(a < b for a, b in zip(rows, rows[1:], strict=False)):
            for i, row in enumerate(rows):  # ascending: each row is read before anything is written over it
                if i != row:
                    for buffer in self.buffers.values():
                        buffer[i, :, :end] = buffer[row, :, :end]
            return SharedBuffers(self.buffers, mask)
        picked = {k: v[rows, :, :end] for k, v in self.buffers.items()}
        return SharedBuffers(_POOL.filled(picked, self.capacity, _spare(len(rows))), mask)

    def join(self, other: KVCache) -> SharedBuffers:
        mask = _joined(self.mask, other.mask)
        rows = mask.shape[0]
        buffers = self.buffers
        if self.spare_rows < rows or self.capacity < other.length:
            buffers = _POOL.filled(self.past(), max(self.capacity, _grown(other.length, 0)), _spare(rows))
        for k, v in other.past().items():
            buffers[k][self.batch : rows, :, : other.length] = v
        return SharedBuffers(buffers, mask)

    @classmethod
    def holding(cls, runs: list[dict[str, np.ndarray]], room: int, already: Already | None = None) -> SharedBuffers:
        """A one-row cache holding these runs of positions one after the other (as the prefix cache keeps
        them), in buffers with room for `room` positions: one copy, straight into place. `already` says
        of a free set of buffers' label (see `label`) how many of these positions its first row holds
        already: of the sets that fit, the one holding most is taken and only the rest is copied (an
        editor's next request finds its prompt in the buffers of the one before)."""
        length = sum(next(iter(r.values())).shape[2] for r in runs)
        buffers, held = _POOL.take(runs[0], _spare(1), _grown(max(room, length), 0), already)
        held = min(held, length)
        at = 0
        for run in runs:
            width = next(iter(run.values())).shape[2]
            if at + width > held:
                start = max(held - at, 0)
                for k, v in run.items():
                    buffers[k][0, :, at + start : at + width] = v[0, :, start:]
            at += width
        return cls(buffers, np.ones((1, length), dtype=np.int64), held)

    def label(self, label: object) -> None:
        """Say what the first row holds (a one-row cache about to be dropped), for `holding` to find."""
        _POOL.label(next(iter(self.buffers.values())), label)

    def bind(self, binding: ort.IOBinding, present_to_past: dict[str, str]) -> None:
        for present, past in present_to_past.items():
            value = ort.OrtValue.ortvalue_from_numpy(self.buffers[past][: self.batch])  # a view: no copy
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)

    def written(self, mask: np.ndarray) -> SharedBuffers:
        return SharedBuffers(self.buffers, mask)


@dataclass
class DeviceBuffers(InPlace):
    tensors: dict[str, ort.OrtValue]  # [B, kv_heads, capacity, head_dim] on `device`
    mask: np.ndarray
    device: str

    @property
    def capacity(self) -> int:
        return next(iter(self.tensors.values())).shape()[2]

    def past(self) -> dict[str, np.ndarray]:
        return {k: v.numpy()[:, :, : self.length] for k, v in self.tensors.items()}

    @classmethod
    def adopt(cls, cache: KVCache, length: int, device: str | None) -> DeviceBuffers:
        assert device is not None, "device buffers need a device"
        if isinstance(cache, DeviceBuffers):
            if cache.capacity >= length:
                return cache
            capacity = _grown(length, cache.capacity)
        else:
            capacity = _grown(length, cache.length)
        host = _buffers(cache.past(), capacity, cache.batch)
        return cls({k: ort.OrtValue.ortvalue_from_numpy(v, device, 0) for k, v in host.items()}, cache.mask, device)

    def keep(self, rows: list[int]) -> HostCache:
        return HostCache(self.past(), self.mask).keep(rows)  # the next step moves it back to the device

    def join(self, other: KVCache) -> HostCache:
        return HostCache(self.past(), self.mask).join(other)

    def bind(self, binding: ort.IOBinding, present_to_past: dict[str, str]) -> None:
        for present, past in present_to_past.items():
            binding.bind_ortvalue_input(past, self.tensors[past])
            binding.bind_ortvalue_output(present, self.tensors[past])

    def written(self, mask: np.ndarray) -> DeviceBuffers:
        return DeviceBuffers(self.tensors, mask, self.device)


def _trimmed(mask: np.ndarray) -> tuple[np.ndarray, int]:
    used = np.flatnonzero(mask.any(axis=0))
    end = int(used[-1]) + 1 if used.size else 0
    return mask[:, :end], end


def _joined(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    length = max(mine.shape[1], theirs.shape[1])
    return np.concatenate([np.pad(m, [(0, 0), (0, length - m.shape[1])]) for m in (mine, theirs)])


def _grown(length: int, capacity: int) -> int:
    """Room for `length` positions, at least twice the old capacity: growing is a copy, so it is rare."""
    return -(-max(length, 2 * capacity) // _CAPACITY_STEP) * _CAPACITY_STEP


def _spare(rows: int) -> int:
    """Rows to allocate for `rows` rows: room for as many to join without a move."""
    return max(2 * rows, 8)


def _buffers(past: dict[str, np.ndarray], capacity: int, rows: int) -> dict[str, np.ndarray]:
    """Zeroed buffers of `rows` rows and `capacity` positions holding `past` in their first rows and
    positions (for a device: what is uploaded is all there is)."""
    out = {}
    for k, v in past.items():
        buffer = np.zeros((rows, v.shape[1], capacity, v.shape[3]), v.dtype)
        buffer[: v.shape[0], :, : v.shape[2]] = v
        out[k] = buffer
    return out


_POOL = BufferPool(idle=1)  # one editor request after another: the last one's buffers serve the next
