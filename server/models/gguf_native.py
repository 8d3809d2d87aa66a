"""Precision "gguf": the fused fp32 graph's weights replaced by the GGUF file's own blocks.

The graph builders see a checkpoint folder of dequantised fp32 weights; which GGUF tensor (and which of
its rows: llama.cpp permutes Llama's Q and K rows, a builder may pack Q, K and V) each MatMul weight came
from is found by value: every row of every 2-D tensor in the file is hashed, and each weight column must
match a row exactly. The blocks found are checked to dequantise to the graph's weight bit for bit before
they replace it; a type with no exact MatMulNBits form (Q2_K, Q3_K, IQ*) is requantised to 8 bits and
named in the report. The embedding gathers from the same blocks; a tied LM head shares them, so the
table is held once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from server.models.gguf import GGUFSource
from server.models.gguf_blocks import (
    Blocks,
    UnsupportedBlock,
    block_sums_nodes,
    blocks_from_gguf,
    dequantize,
    gather_nodes,
    matmul_nodes,
)

__all__ = ["NativeReport", "write_native_graph"]

_FLOATS = frozenset({"F32", "F16", "BF16"})
_CHUNK = 8192


@dataclass
class NativeReport:
    imported: Counter = field(default_factory=Counter)  # GGUF type -> MatMuls holding its blocks
    kept_float: list[str] = field(default_factory=list)  # MatMuls whose file tensor is a float one
    requantised: list[str] = field(default_factory=list)  # GGUF tensors with no exact form, now 8-bit
    not_in_file: list[str] = field(default_factory=list)  # MatMuls and Gathers on a table the file has not
    embedding: str = "fp32"

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{n} {t}" for t, n in self.imported.most_common()) or "none"
        out = [f"  MatMuls from the file's blocks: {kinds}; embedding: {self.embedding}"]
        if self.kept_float:
            out.append(f"  float in the file, kept fp32: {len(self.kept_float)}")
        if self.not_in_file:
            out.append(f"  not a tensor of the file, left as built: {', '.join(self.not_in_file)}")
        if self.requantised:
            out.append(f"  no exact form, requantised to 8 bits: {', '.join(self.requantised)}")
        return out


def _hashes(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each float32 row's bits (rows [R, K]); equal rows, equal hashes."""
    mult = np.random.default_rng(rows.shape[1]).integers(1, 2**62, size=rows.shape[1], dtype=np.uint64) | np.uint64(1)
    out = np.empty(len(rows), dtype=np.uint64)
    for start in range(0, len(rows), _CHUNK):
        bits = np.ascontiguousarray(rows[start : start + _CHUNK], dtype=np.float32).view(np.uint32).astype(np.uint64)
        out[start : start + _CHUNK] = (bits * mult).sum(axis=1)
    return out


class _FileRows:
    """Every row of the file's 2-D tensors, by hash of its dequantised values."""

    def __init__(self, gguf_file: GGUFSource) -> None:
        from gguf.quants import dequantize as gguf_dequantize

        self.tensors = [t for t in gguf_file.reader.tensors if len(t.shape) == 2]
        self.index: dict[int, list[tuple[int, int]]] = {}
        self._blocks: dict[int, Blocks | None] = {}
        for t_index, tensor in enumerate(self.tensors):
            rows = gguf_dequantize(tensor.data, tensor.tensor_type)
            for row, h in enumerate(_hashes(rows.reshape(len(rows), -1)).tolist()):
                self.index.setdefault(h, []).append((t_index, row))

    def sources(self, rows: np.ndarray) -> list[tuple[int, int]] | None:
        """For each row of `rows` [N, K], the (tensor, row) of the file holding it; None if any is not there."""
        found: list[list[tuple[int, int]]] = []
        for h in _hashes(rows).tolist():
            if (candidates := self.index.get(h)) is None:
                return None
            found.append(candidates)
        # a row that several tensors hold alike (all zeros, say) goes to the tensor the unique rows name
        votes = Counter(c[0][0] for c in found if len({t for t, _ in c}) == 1)
        # and, among equals, the row in the weight's own place: a tied table stays one whole tensor
        return [max(c, key=lambda tr: (votes.get(tr[0], 0), tr[1] == i)) for i, c in enumerate(found)]

    def qtype(self, t_index: int) -> str:
        return self.tensors[t_index].tensor_type.name

    def blocks(self, t_index: int) -> Blocks | None:
        if t_index not in self._blocks:
            tensor = self.tensors[t_index]
            try:
                rows = int(tensor.shape[1])
                self._blocks[t_index] = blocks_from_gguf(tensor.data, tensor.tensor_type, (rows, int(tensor.shape[0])))
            except UnsupportedBlock:
                self._blocks[t_index] = None
        return self._blocks[t_index]


def _take(parts: list[Blocks], picks: list[tuple[int, int]], order: list[int]) -> Blocks | None:
    """The rows `picks` (part, row) of blocks that share one layout, as one Blocks; None if they do not."""
    if len({_layout(b) for b in parts}) != 1:
        return None
    base = np.cumsum([0] + [b.n for b in parts])
    rows = np.array([base[order.index(t)] + r for t, r in picks])
    first = parts[0]
    return Blocks(
        bits=first.bits,
        block_size=first.block_size,
        zero=first.zero,
        qtype="+".join(sorted({b.qtype for b in parts})),
        codes=np.concatenate([b.codes for b in parts])[rows],
        scales=np.concatenate([b.scales for b in parts])[rows],
        offsets=None if first.offsets is None else np.concatenate([b.offsets for b in parts])[rows],
    )


Part = tuple[Blocks, str]  # blocks, and the initializer name they share when they are one whole tensor


def _file_blocks(rows: np.ndarray, file: _FileRows, report: NativeReport, label: str) -> list[Part] | None:
    """The blocks holding `rows` [N, K] exactly as the file does (several parts, in column order, where a
    builder packed tensors of different block types), or requantised where they cannot be held; None
    to keep a float weight."""
    picks = file.sources(rows)
    if picks is None:  # a constant of the builder's own (a rotary table), not a weight of the file
        report.not_in_file.append(label)
        return None
    order = sorted({t for t, _ in picks})
    names = [file.tensors[t].name for t in order]
    if all(file.qtype(t) in _FLOATS for t in order):
        report.kept_float.append(label)
        return None
    runs = [picks] if _one_layout(file, order) else _runs(picks)
    parts: list[Part] = []
    start = 0
    for run in runs:
        tensors = sorted({t for t, _ in run})
        blocks = [file.blocks(t) for t in tensors]
        present = [b for b in blocks if b is not None]
        held = _take(present, run, tensors) if len(present) == len(blocks) else None
        if held is None or not np.array_equal(dequantize(held).view(np.uint32), rows[start : start + len(run)].view(np.uint32)):
            parts = []
            break
        whole = len(tensors) == 1 and [r for _, r in run] == list(range(held.n)) and len(runs) == 1
        parts.append((held, "gguf/" + file.tensors[tensors[0]].name if whole else ""))
        start += len(run)
    if parts:
        for held, _ in parts:
            report.imported[held.qtype] += 1
        return parts
    if rows.shape[1] % 32:
        report.kept_float.append(label)
        return None
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    report.requantised += [n for n in names if n not in report.requantised]
    q8 = quantize(rows, GGMLQuantizationType.Q8_0)
    return [(blocks_from_gguf(q8, GGMLQuantizationType.Q8_0, (rows.shape[0], rows.shape[1])), "")]


def _one_layout(file: _FileRows, tensors: list[int]) -> bool:
    found = [b for t in tensors if (b := file.blocks(t)) is not None]
    return len(found) == len(tensors) and len({_layout(b) for b in found}) == 1


def _layout(blocks: Blocks) -> tuple[int, int, int, bool, int]:
    """What blocks must share to be read by one MatMulNBits."""
    return blocks.bits, blocks.block_size, blocks.zero, blocks.offsets is None, blocks.k


def _runs(picks: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Consecutive columns from the same tensor: Q, K and V of a packed projection."""
    runs: list[list[tuple[int, int]]] = []
    for pick in picks:
        if runs and runs[-1][-1][0] == pick[0]:
            runs[-1].append(pick)
        else:
            runs.append([pick])
    return runs


def _emit_matmul(x: str, y: str, name: str, parts: list[Part], sums: dict[str, str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """One MatMulNBits (and its correction) per part; parts side by side on the last axis. `sums`: the
    block sums already computed, by input, so that MatMuls reading one input share them."""
    nodes: list[onnx.NodeProto] = []
    tensors: list[onnx.TensorProto] = []
    if any(b.offsets is not None for b, _ in parts) and x not in sums:
        sums[x], nodes, tensors = block_sums_nodes(x, parts[0][0].k)
    outputs = [y] if len(parts) == 1 else [f"{name}/gguf{i}/output_0" for i in range(len(parts))]
    for i, ((blocks, shared), out) in enumerate(zip(parts, outputs, strict=False)):
        label = shared or (f"{name}/gguf" if len(parts) == 1 else f"{name}/gguf{i}")
        more_nodes, more_tensors = matmul_nodes(x, out, label, blocks, sums=sums.get(x))
        nodes += more_nodes
        tensors += more_tensors
    if len(parts) > 1:
        nodes.append(onnx.helper.make_node("Concat", outputs, [y], name=f"{name}/gguf/concat", axis=-1))
    return nodes, tensors


def write_native_graph(fp32_onnx: Path, gguf_file: GGUFSource, dst: Path, log: Callable[[str], None] = print) -> NativeReport:
    """Rewrite the builder's fp32 graph with the GGUF file's blocks; saved to `dst` with external data."""
    model = onnx.load(str(fp32_onnx), load_external_data=True)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    log(f"  hashing every row of {gguf_file.path.name}")
    file = _FileRows(gguf_file)
    report = NativeReport()
    new_nodes: list[onnx.NodeProto] = []
    added: dict[str, onnx.TensorProto] = {}
    sums: dict[str, str] = {}
    # by initializer: a tied table is read by the embedding's Gather and by the head's MatMul, matched once
    found: dict[str, list[Part] | None] = {}

    def file_blocks(name: str, rows: Callable[[], np.ndarray], label: str) -> list[Part] | None:
        if name not in found:
            found[name] = _file_blocks(rows(), file, report, label)
        return found[name]

    def emit(nodes: list[onnx.NodeProto], tensors: list[onnx.TensorProto]) -> None:
        new_nodes.extend(nodes)
        for t in tensors:
            added.setdefault(t.name, t)

    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and len(weights[node.input[1]].dims) == 2:
            weight = weights[node.input[1]]
            parts = file_blocks(weight.name, partial(_rows_of, weight), node.name)
            if parts is not None:
                emit(*_emit_matmul(node.input[0], node.output[0], node.name, parts, sums))
                continue
        elif node.op_type == "Gather" and (table := _table(node.input[0], weights, producers)) is not None:
            parts = file_blocks(*table, node.name)
            if parts is not None and len(parts) == 1:
                blocks, shared = parts[0]
                report.embedding = f"{blocks.qtype} blocks" + (", shared with the LM head" if shared else "")
                emit(*gather_nodes(node.input[1], node.output[0], shared or f"{node.name}/gguf", blocks))
                continue
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unused(graph)
    graph.initializer.extend(added.values())
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True, location=dst.name + ".data", size_threshold=1024)
    return report


def _rows_of(weight: onnx.TensorProto) -> np.ndarray:
    """A MatMul's weight [K, N] as the file's rows [N, K]."""
    return np.ascontiguousarray(numpy_helper.to_array(weight).T)


def _table(
    name: str, weights: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto]
) -> tuple[str, Callable[[], np.ndarray]] | None:
    """An embedding table [V, K], by the initializer it is: an initializer, or the builder's Transpose of
    a tied LM head's weight (whose rows are then those of the head's MatMul)."""
    if name in weights and len(weights[name].dims) == 2:
        return name, lambda: numpy_helper.to_array(weights[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Transpose" and node.input[0] in weights:
        source = weights[node.input[0]]
        return source.name, partial(_rows_of, source)
    return None


def _drop_unused(graph: onnx.GraphProto) -> None:
    """Nodes whose outputs nobody reads (a tied head's Transpose) and the initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for node in graph.node for i in node.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for node in graph.node for i in node.input}
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)
