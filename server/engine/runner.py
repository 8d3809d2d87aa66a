"""One ONNX Runtime session and its KV cache: prefill a prompt, then decode one token per row per step.

It reads the two graph shapes the store writes: onnxruntime-genai's fused graph (input_ids,
attention_mask, past_key_values.N.key/value) and optimum's (the same plus position_ids). The cache is
a dict of numpy arrays [batch, kv_heads, past, head_dim] fed back each step; rows can be copied (n
samples of one prompt share its prefill) and dropped (a finished sample leaves the batch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class GraphError(RuntimeError):
    """The ONNX file is not a causal LM graph with a KV cache that this runner understands."""


@dataclass
class KVCache:
    """Past keys and values of a batch of rows, which may hold different numbers of tokens.

    mask[b, j] is 1 where row b holds a token at cache position j. Graphs that take position_ids
    (optimum's) attend through the mask, so a row's tokens may have holes (a short row joined to a
    longer batch); graphs that do not (onnxruntime-genai's GroupQueryAttention) derive each row's
    length and positions from the mask's sum, so there every row is packed at the start.

    A shared cache (GroupQueryAttention graphs) is a set of buffers with room beyond `length`: the
    graph reads the past from them and writes each new token's key and value into them in place, so
    a decode step copies nothing; a step that would overflow them moves the cache into buffers twice
    as large. Otherwise the graph returns the past and the new tokens concatenated, a copy of the whole
    cache per step.
    """

    # past_key_values.N.key/value -> [B, kv_heads, capacity >= length, head_dim]: numpy arrays, or OrtValues
    # on the runner's device (CUDA), where a shared cache stays between steps
    tensors: dict[str, np.ndarray | ort.OrtValue]
    mask: np.ndarray  # [B, length] int64
    shared: bool = False
    # a shared cache in host memory: buffers with rows to spare, whose first B rows `tensors` are (views,
    # still C-contiguous). A row joins by being written into the next spare row, and rows leave by the
    # later rows moving down, so neither copies the whole batch nor allocates
    backing: dict[str, np.ndarray] | None = None

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def capacity(self) -> int:
        value = next(iter(self.tensors.values()))
        return value.shape[2] if isinstance(value, np.ndarray) else value.shape()[2]

    def host(self) -> dict[str, np.ndarray]:
        """The buffers as numpy arrays (a device cache is copied to host memory: rows joining or leaving
        the batch are rearranged there, once per such event, not per step)."""
        return {k: v if isinstance(v, np.ndarray) else v.numpy() for k, v in self.tensors.items()}

    def tokens(self) -> np.ndarray:
        """[B] tokens each row holds: the position of its next token."""
        return self.mask.sum(axis=1)

    def repeat(self, n: int) -> KVCache:
        """n copies of a one-row cache: n samples of one prompt without n prefills."""
        return KVCache({k: np.repeat(v, n, axis=0) for k, v in self.host().items()}, np.repeat(self.mask, n, axis=0),
                       self.shared)

    def select(self, rows: list[int]) -> KVCache:
        """The given rows, trimmed to the longest of them (positions no row holds are dropped)."""
        mask = self.mask[rows]
        used = np.flatnonzero(mask.any(axis=0))
        end = int(used[-1]) + 1 if used.size else 0
        if self.backing is not None and all(a < b for a, b in zip(rows, rows[1:], strict=False)):
            for i, row in enumerate(rows):  # ascending: each row is read before anything is written over it
                if i != row:
                    for buffer in self.backing.values():
                        buffer[i, :, :end] = buffer[row, :, :end]
            return KVCache({k: v[: len(rows)] for k, v in self.backing.items()}, mask[:, :end], True, self.backing)
        capacity = self.capacity if self.shared else end
        return KVCache({k: _sized(v[rows, :, :end], capacity) for k, v in self.host().items()}, mask[:, :end],
                       self.shared)

    def join(self, other: KVCache) -> KVCache:
        """Both batches in one (self's rows first), the shorter padded at the end with empty positions."""
        length = max(self.length, other.length)
        masks = [np.pad(m, [(0, 0), (0, length - m.shape[1])]) for m in (self.mask, other.mask)]
        mask = np.concatenate(masks)
        theirs = other.host()
        if self.shared and all(isinstance(v, np.ndarray) for v in self.tensors.values()):
            backing = self.backing
            rows = self.batch + other.batch
            if backing is None or _rows(backing) < rows or self.capacity < other.length:
                backing = _backed(self.host(), self.length, max(self.capacity, other.capacity), rows)
            for k, buffer in backing.items():
                buffer[self.batch : rows, :, : other.length] = theirs[k][:, :, : other.length]
                buffer[self.batch : rows, :, other.length :] = 0  # a spare row may hold a row that left
            return KVCache({k: v[:rows] for k, v in backing.items()}, mask, True, backing)
        capacity = max(self.capacity, other.capacity) if self.shared else length  # a device cache: rearranged on the host
        tensors = {}
        for k, v in self.host().items():
            w = theirs[k]
            out = np.zeros((self.batch + other.batch, v.shape[1], capacity, v.shape[3]), v.dtype)
            out[: self.batch, :, : self.length] = v[:, :, : self.length]
            out[self.batch :, :, : other.length] = w[:, :, : other.length]
            tensors[k] = out
        return KVCache(tensors, mask, self.shared)

    def reserve(self, length: int) -> KVCache:
        """This cache with buffers that hold `length` positions (itself when they already do)."""
        if self.capacity >= length:
            return self
        capacity = _round_up(max(length, 2 * self.capacity), _CAPACITY_STEP)
        if self.backing is not None:
            backing = _backed(self.host(), self.length, capacity, _rows(self.backing))
            return KVCache({k: v[: self.batch] for k, v in backing.items()}, self.mask, True, backing)
        return KVCache({k: _sized(v[:, :, :self.length], capacity) for k, v in self.host().items()}, self.mask,
                       self.shared)


def _rows(backing: dict[str, np.ndarray]) -> int:
    return next(iter(backing.values())).shape[0]


def _backed(tensors: dict[str, np.ndarray], length: int, capacity: int, rows: int) -> dict[str, np.ndarray]:
    """Buffers of twice `rows` rows and `capacity` positions holding `tensors`' rows and first `length`
    positions (np.zeros: pages no row has touched take no memory)."""
    out = {}
    for k, v in tensors.items():
        buffer = np.zeros((max(2 * rows, 8), v.shape[1], capacity, v.shape[3]), v.dtype)
        buffer[: v.shape[0], :, :length] = v[:, :, :length]
        out[k] = buffer
    return out


_CAPACITY_STEP = 128  # shared buffers grow in whole multiples of this many positions


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _sized(used: np.ndarray, capacity: int) -> np.ndarray:
    """A C-contiguous [B, H, capacity, D] buffer whose first positions are `used` (the rest zero)."""
    if used.shape[2] == capacity:
        return np.ascontiguousarray(used)
    out = np.zeros(used.shape[:2] + (capacity,) + used.shape[3:], used.dtype)
    out[:, :, : used.shape[2]] = used
    return out


class DeviceError(RuntimeError):
    """The device asked for cannot run here (no CUDA build of ONNX Runtime, or no GPU)."""


DEVICES = ("cpu", "cuda")


class Runner:
    def __init__(self, onnx_path: Path, threads: int, share_buffer: bool = True, device: str = "cpu",
                 profile_prefix: str | None = None) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if profile_prefix is not None:  # ONNX Runtime's profiler (bench/profile.py): session.end_profiling() writes it
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        self.session = ort.InferenceSession(str(onnx_path), options, providers=_providers(device))
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise DeviceError(f"ONNX Runtime could not place {onnx_path.name} on CUDA: {self.session.get_providers()}")
        # where a shared cache's buffers live between steps: None, numpy arrays in host memory; else
        # OrtValues on that device, so that a step moves nothing between host and GPU but ids and logits
        self.kv_device: str | None = None if device == "cpu" else device
        inputs = {i.name: i for i in self.session.get_inputs()}
        self._past_names = sorted((n for n in inputs if _PAST.match(n)), key=_layer_order)
        if "input_ids" not in inputs or not self._past_names:
            raise GraphError(f"{onnx_path} has no input_ids / past_key_values inputs: not a KV-cache decoder")
        first = inputs[self._past_names[0]]
        self._kv_heads, self._head_dim = first.shape[1], first.shape[3]
        if not (isinstance(self._kv_heads, int) and isinstance(self._head_dim, int)):
            raise GraphError(f"{onnx_path}: KV cache shape {first.shape} has no fixed heads/head_dim")
        self._kv_dtype = _ORT_TO_NUMPY[first.type]
        self._position_ids = "position_ids" in inputs
        # GroupQueryAttention (the graphs without position_ids) writes into its past buffers when they
        # are bound as the present outputs too; optimum's attention concatenates, so it cannot
        self.share_buffer = share_buffer and not self._position_ids
        # graphs that can skip the LM head for positions nobody reads (server/models/last_logits.py)
        overridable = {i.name for i in self.session.get_overridable_initializers()}  # inputs with a default
        self._logits_to_keep = "logits_to_keep" in inputs or "logits_to_keep" in overridable
        # IOBinding binds graph inputs only, not an initializer that a feed may override
        self._keep_bindable = "logits_to_keep" in inputs
        self._output_names = [o.name for o in self.session.get_outputs()]
        if self._output_names[0] != "logits":
            raise GraphError(f"{onnx_path}: first output is {self._output_names[0]!r}, expected logits")
        self._present_to_past = {
            name: name.replace("present", "past_key_values", 1) for name in self._output_names[1:]
        }

    def empty_cache(self, batch: int) -> KVCache:
        shape = (batch, self._kv_heads, 0, self._head_dim)
        return KVCache({name: np.zeros(shape, self._kv_dtype) for name in self._past_names},
                       np.zeros((batch, 0), dtype=np.int64), self.share_buffer)

    def forward(self, ids: np.ndarray, cache: KVCache, keep: int | None = None) -> tuple[np.ndarray, KVCache]:
        # ids: [B, T] int64 -> logits: [B, T', V] float32 for the last T' = keep (default all) positions
        # where the graph can skip the others, else [B, T, V]; each row's T new tokens follow its own
        batch, new = ids.shape
        held = cache.tokens()  # [B]
        if self._position_ids:  # attention through the mask: new tokens go at the end, holes allowed
            mask = np.concatenate([cache.mask, np.ones((batch, new), dtype=np.int64)], axis=1)
        else:  # GroupQueryAttention: row b's tokens are its first held[b] + new positions
            mask = (np.arange(cache.length + new) < (held + new)[:, None]).astype(np.int64)
        feed: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
        if self._position_ids:
            feed["position_ids"] = held[:, None] + np.arange(new, dtype=np.int64)
        if self._logits_to_keep:
            feed["logits_to_keep"] = np.array([keep or new], dtype=np.int64)
        if cache.shared and (new == 1 or self._keep_bindable or not self._logits_to_keep):
            if new == 1 and not self._keep_bindable:
                feed.pop("logits_to_keep", None)  # one new position: its logits are all there are
            return self._run_in_place(feed, cache.reserve(mask.shape[1]), mask)
        # a shared cache that must feed logits_to_keep (a prefill) takes the copying path once; the next
        # step moves it into buffers with room
        past = {k: v[:, :, : cache.length] for k, v in cache.host().items()}
        outputs = self.session.run(self._output_names, feed | past)
        present = {self._present_to_past[n]: v for n, v in zip(self._output_names[1:], outputs[1:], strict=False)}
        return outputs[0].astype(np.float32, copy=False), KVCache(present, mask, cache.shared)

    def _run_in_place(self, feed: dict[str, np.ndarray], cache: KVCache, mask: np.ndarray) -> tuple[np.ndarray, KVCache]:
        # each past buffer is bound as its present output too: GroupQueryAttention then appends the new
        # tokens' keys and values in place (it sees the shared buffer) instead of copying the past
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self._output_names[0], "cpu")  # sampling reads the logits on the host
        tensors = {}
        for present, past in self._present_to_past.items():
            buffer = cache.tensors[past]
            if isinstance(buffer, np.ndarray):  # on the host a view, no copy; to a device an upload
                buffer = ort.OrtValue.ortvalue_from_numpy(buffer, *((self.kv_device, 0) if self.kv_device else ()))
            tensors[past] = buffer if self.kv_device else cache.tensors[past]
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        backing = None if self.kv_device else cache.backing  # the views were written in place: same buffers
        return logits.astype(np.float32, copy=False), KVCache(tensors, mask, shared=True, backing=backing)

    def prefill(self, ids: list[int], all_logits: bool = False) -> tuple[np.ndarray, KVCache]:
        # ids: T prompt tokens -> logits [T, V] (all_logits, to score the prompt) or [>=1, V] whose last
        # row is the last position's; one-row cache
        keep = None if all_logits else 1
        logits, cache = self.forward(np.asarray([ids], dtype=np.int64), self.empty_cache(1), keep)
        return logits[0], cache

    def decode(self, tokens: list[int], cache: KVCache) -> tuple[np.ndarray, KVCache]:
        # tokens: one per row -> logits [B, V]
        logits, cache = self.forward(np.asarray(tokens, dtype=np.int64)[:, None], cache, 1)
        return logits[:, -1], cache


def _providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device != "cuda":
        raise DeviceError(f"unknown device {device!r}: choose one of {', '.join(DEVICES)}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError(
            "device 'cuda' needs the CUDA build of ONNX Runtime (pip install onnxruntime-gpu in place of "
            f"onnxruntime) and an NVIDIA GPU; this one offers {', '.join(ort.get_available_providers())}"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _layer_order(name: str) -> tuple[int, str]:
    match = _PAST.match(name)
    assert match is not None
    return int(match.group(1)), match.group(2)
