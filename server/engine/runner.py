"""One ONNX Runtime session: prefill a prompt (on top of a past, or from nothing), then decode one
token per row per step, each call taking a KV cache and returning the next (server/engine/kvcache.py).

It reads the two graph shapes the store writes: onnxruntime-genai's fused graph (input_ids,
attention_mask, past_key_values.N.key/value) and optimum's (the same plus position_ids). The fused
graph writes the new keys and values into the cache's own buffers (InPlace); optimum's returns the
past and the new tokens concatenated (HostCache).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from server.engine.kvcache import Already, DeviceBuffers, HostCache, InPlace, KVCache, SharedBuffers

_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class GraphError(RuntimeError):
    """The ONNX file is not a causal LM graph with a KV cache that this runner understands."""


class DeviceError(RuntimeError):
    """The device asked for cannot run here (no CUDA build of ONNX Runtime, or no GPU)."""


DEVICES = ("cpu", "cuda")


class Runner:
    def __init__(
        self, onnx_path: Path, threads: int, share_buffer: bool = True, device: str = "cpu", profile_prefix: str | None = None
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # ONNX Runtime's workers spin inside a run (fast hand-offs between its parallel sections) but stop
        # when it returns: the core they would spin on is the one the sampler's second thread takes
        # between two steps (server/engine/sampler.py). Measured: single-stream decode unchanged.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.threads = threads
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
        # what one position of one row takes in the cache, every layer's key and value
        self.kv_bytes_per_token = len(self._past_names) * self._kv_heads * self._head_dim * np.dtype(self._kv_dtype).itemsize
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
        self._present_to_past = {name: name.replace("present", "past_key_values", 1) for name in self._output_names[1:]}

    def empty_cache(self, batch: int) -> HostCache:
        return HostCache.empty(self._past_names, batch, self._kv_heads, self._head_dim, self._kv_dtype)

    def holding(self, runs: list[dict[str, np.ndarray]], room: int, already: Already | None = None) -> KVCache:
        """A one-row past holding these runs of positions (a cached prefix), in the storage this runner's
        next step uses, with room for `room` positions (`already`: see SharedBuffers.holding)."""
        if self._in_place is SharedBuffers:
            return SharedBuffers.holding(runs, room, already)
        return HostCache.holding({k: np.concatenate([r[k] for r in runs], axis=2) for k in runs[0]})

    @property
    def _in_place(self) -> type[InPlace] | None:
        """Where the cache lives between in-place steps: host buffers, or OrtValues on the device."""
        if not self.share_buffer:
            return None
        return SharedBuffers if self.kv_device is None else DeviceBuffers

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
        in_place = self._in_place
        if in_place is not None:
            if not self._keep_bindable:  # a graph whose logits_to_keep has a default (the store's fused
                feed.pop("logits_to_keep", None)  # graphs bind it since format 4): every position's logits
            return self._run_in_place(feed, in_place.adopt(cache, mask.shape[1], self.kv_device), mask)
        outputs = self.session.run(self._output_names, feed | cache.past())
        present = {self._present_to_past[n]: v for n, v in zip(self._output_names[1:], outputs[1:], strict=False)}
        return outputs[0].astype(np.float32, copy=False), HostCache(present, mask)

    def _run_in_place(self, feed: dict[str, np.ndarray], cache: InPlace, mask: np.ndarray) -> tuple[np.ndarray, KVCache]:
        # each past buffer is bound as its present output too: GroupQueryAttention then appends the new
        # tokens' keys and values in place (it sees the shared buffer) instead of copying the past
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(self._output_names[0], "cpu")  # sampling reads the logits on the host
        cache.bind(binding, self._present_to_past)
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        return logits.astype(np.float32, copy=False), cache.written(mask)

    def prefill(self, ids: list[int], all_logits: bool = False, past: KVCache | None = None) -> tuple[np.ndarray, KVCache]:
        # ids: T prompt tokens -> logits [T, V] (all_logits, to score the prompt) or [>=1, V] whose last
        # row is the last position's; a one-row cache holding past's positions (if any) and the prompt's
        keep = None if all_logits else 1
        logits, cache = self.forward(np.asarray([ids], dtype=np.int64), past or self.empty_cache(1), keep)
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
