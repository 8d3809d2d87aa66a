"""A GGUF tensor's quantised blocks as ONNX Runtime's MatMulNBits (com.microsoft) takes them, with no
second rounding: the integers and scales are the file's own, only re-laid out.

MatMulNBits computes w = scale·(code − 2^(bits−1)) per block (the implicit zero point; float zero points
are exact but fall off MLAS's fast kernels, see shared/reference/models-and-stack.md). So each GGUF type
maps to codes the kernel can read directly, plus, for the types with an additive minimum (Q4_1, Q5_1,
Q4_K, Q5_K), a per-32-weight offset that the graph adds back as `ReduceSum(x in blocks of 32) @ C`.

`dequantize` recomputes the weights in gguf.quants' own order of float32 operations, so comparing it with
`gguf.quants.dequantize` bit for bit proves the import holds exactly what the file holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np
import onnx
from gguf.quants import Q4_K
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Blocks", "UnsupportedBlock", "blocks_from_gguf", "dequantize", "block_sums_nodes", "matmul_nodes", "gather_nodes"]

_T = gguf.GGMLQuantizationType
_OFFSET_GROUP = 32  # every GGUF type with an additive minimum keeps it per 32 weights


class UnsupportedBlock(ValueError):
    """The GGUF type has no exact MatMulNBits form here (Q2_K, Q3_K, IQ*, floats, ...): the caller
    dequantises or keeps those some other way."""

    def __init__(self, qtype: gguf.GGMLQuantizationType) -> None:
        self.qtype = qtype
        super().__init__(f"GGUF block type {qtype.name} has no exact MatMulNBits import")


@dataclass(frozen=True)
class Blocks:
    """One [N, K] weight (N output channels, the GGUF rows) as MatMulNBits' inputs.

    The weight is w = scale·(code − zero) [+ offset]. `zero` is what the *file* subtracts, not the
    kernel's implicit zero point 2^(bits−1): it is 0 for the 4-bit types with a minimum (their codes
    0..15 cannot be shifted by 8 and still fit a nibble), 8 for Q4_0 and 128 for every 8-bit type
    (code = the integer the file multiplies by its scale, + 128). `matmul_nodes` adds back (2^(bits−1) − zero)·scale +
    offset per 32 weights, which is zero work for Q4_0, Q5_0, Q8_0 and Q6_K.
    """

    bits: int  # 4 or 8
    block_size: int  # 16 or 32 weights per scale
    codes: np.ndarray  # uint8 [N, K/block, block·bits/8]; 4-bit: element 2j low nibble, 2j+1 high
    scales: np.ndarray  # float32 [N, K/block]
    offsets: np.ndarray | None  # float32 [N, K/32]: the file's additive term (+m, −dmin·m), or None
    qtype: str  # the GGUF type's name, e.g. "Q4_K"
    zero: int  # the integer the file subtracts from a code (see above)

    def __post_init__(self) -> None:
        n, n_blocks, blob = self.codes.shape
        if self.bits not in (4, 8) or blob * 8 != self.block_size * self.bits or self.codes.dtype != np.uint8:
            raise ValueError(f"codes {self.codes.dtype}{list(self.codes.shape)} do not hold {self.bits}-bit blocks of {self.block_size}")
        if self.scales.shape != (n, n_blocks) or self.scales.dtype != np.float32:
            raise ValueError(f"scales {self.scales.dtype}{list(self.scales.shape)}, expected float32[{n}, {n_blocks}]")
        if self.offsets is not None:
            # The graph adds offsets per 32 weights; a finer block would need them per block instead.
            if self.block_size != _OFFSET_GROUP or self.offsets.shape != (n, self.k // _OFFSET_GROUP):
                raise ValueError(f"offsets need blocks of {_OFFSET_GROUP} and shape [{n}, {self.k // _OFFSET_GROUP}]")

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @property
    def k(self) -> int:
        return int(self.codes.shape[1]) * self.block_size


def _planes(packed: np.ndarray, width: int, nbits: int) -> np.ndarray:
    """Every GGUF sub-byte field is laid out the same way: a run of `width` bytes holds `width` values
    in its lowest `nbits`, the next `width` values in the next `nbits`, and so on. [..., B] uint8 ->
    [..., B·8/nbits] uint8, in weight order (gguf.quants' own reshape-and-shift, written once)."""
    shifts = np.arange(0, 8, nbits, dtype=np.uint8).reshape(-1, 1)
    runs = packed.reshape(*packed.shape[:-1], -1, 1, width) >> shifts
    return (runs & np.uint8((1 << nbits) - 1)).reshape(*packed.shape[:-1], -1)


def _fp16(field: np.ndarray) -> np.ndarray:
    """[..., 2] bytes -> float32 [...], as gguf does (fp16 then an exact widening)."""
    return np.ascontiguousarray(field).view(np.float16)[..., 0].astype(np.float32)


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """[N, nb, block] codes -> MatMulNBits' B bytes: 4-bit pairs (2j, 2j+1) share a byte, 2j low."""
    if bits == 8:
        return np.ascontiguousarray(q, dtype=np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << np.uint8(4))).astype(np.uint8)


def _shift8(q: np.ndarray, file_zero: int) -> np.ndarray:
    """8-bit code for the file's integer q − file_zero: shifted so that the kernel's 128 undoes it."""
    return (q.astype(np.int16) - file_zero + 128).astype(np.uint8)


def blocks_from_gguf(raw: np.ndarray, qtype: gguf.GGMLQuantizationType, shape: tuple[int, int]) -> Blocks:
    """The tensor's bytes (`ReaderTensor.data`) and its numpy shape (N rows, K) -> Blocks, exactly."""
    qtype = _T(qtype)
    n, k = shape
    if qtype not in _IMPORTS:
        raise UnsupportedBlock(qtype)
    file_block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if k % file_block or raw.size != n * (k // file_block) * type_size:
        raise ValueError(f"{qtype.name} tensor of {raw.size} bytes is not [{n}, {k}]")
    blocks = np.asarray(raw).view(np.uint8).reshape(n, k // file_block, type_size)
    return _IMPORTS[qtype](blocks, n, k)


def _q4_0(b: np.ndarray, n: int, k: int) -> Blocks:
    d, qs = _fp16(b[..., :2]), _planes(b[..., 2:], 16, 4)
    return Blocks(4, 32, _pack(qs, 4), d, None, "Q4_0", 8)  # w = d·(q − 8): the kernel's own form


def _q4_1(b: np.ndarray, n: int, k: int) -> Blocks:
    d, m, qs = _fp16(b[..., :2]), _fp16(b[..., 2:4]), _planes(b[..., 4:], 16, 4)
    return Blocks(4, 32, _pack(qs, 4), d, m, "Q4_1", 0)  # w = d·q + m


def _q5(b: np.ndarray, minimum: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Q5_0 / Q5_1: fp16 d [, fp16 m], 32 high bits (bit i of the little-endian uint32 is weight i),
    16 bytes of low nibbles."""
    at = 4 if minimum else 2
    qh = np.unpackbits(b[..., at : at + 4], axis=-1, bitorder="little")
    q = _planes(b[..., at + 4 :], 16, 4) | (qh << np.uint8(4))
    return _fp16(b[..., :2]), q, _fp16(b[..., 2:4]) if minimum else None


def _q5_0(b: np.ndarray, n: int, k: int) -> Blocks:
    d, q, _ = _q5(b, minimum=False)
    return Blocks(8, 32, _shift8(q, 16), d, None, "Q5_0", 128)  # w = d·(q − 16)


def _q5_1(b: np.ndarray, n: int, k: int) -> Blocks:
    d, q, m = _q5(b, minimum=True)
    return Blocks(8, 32, _shift8(q, 0), d, m, "Q5_1", 128)  # w = d·q + m


def _q8_0(b: np.ndarray, n: int, k: int) -> Blocks:
    # w = d·q, q int8; q + 128 is the byte with its sign bit flipped (no int16 copy of an embedding)
    codes = b[..., 2:] ^ np.uint8(0x80)
    return Blocks(8, 32, codes, _fp16(b[..., :2]), None, "Q8_0", 128)


def _k_scales(b: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K / Q5_K super-block header: fp16 d, fp16 dmin, 12 bytes of 6-bit (scale, min) pairs for its 8
    sub-blocks (gguf's own unpacker). Returns per-32 scale d·sc and offset −dmin·m, float32 [N, K/32],
    each product rounded once as gguf.quants rounds it."""
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(b[..., 4:16]).reshape(-1, 12))
    sc, m = sc.reshape(n, -1, 8), m.reshape(n, -1, 8)
    scale = _fp16(b[..., :2])[..., None] * sc.astype(np.float32)
    # −(dmin·m): IEEE subtraction is addition of the negation, so scale·q + offset == gguf's d·q − dm.
    offset = -(_fp16(b[..., 2:4])[..., None] * m.astype(np.float32))
    return scale.reshape(n, k // 32), offset.reshape(n, k // 32)


def _q4_k(b: np.ndarray, n: int, k: int) -> Blocks:
    scale, offset = _k_scales(b, n, k)
    q = _planes(b[..., 16:], 32, 4).reshape(n, k // 32, 32)
    return Blocks(4, 32, _pack(q, 4), scale, offset, "Q4_K", 0)


def _q5_k(b: np.ndarray, n: int, k: int) -> Blocks:
    scale, offset = _k_scales(b, n, k)
    q = _planes(b[..., 48:], 32, 4) | (_planes(b[..., 16:48], 32, 1) << np.uint8(4))
    return Blocks(8, 32, _shift8(q.reshape(n, k // 32, 32), 0), scale, offset, "Q5_K", 128)


def _q6_k(b: np.ndarray, n: int, k: int) -> Blocks:
    # 128 bytes of low nibbles, 64 of 2-bit high parts, 16 int8 sub-block scales, fp16 d; w = d·sc·(q − 32)
    q = _planes(b[..., :128], 64, 4) | (_planes(b[..., 128:192], 32, 2) << np.uint8(4))
    sc = np.ascontiguousarray(b[..., 192:208]).view(np.int8).astype(np.float32)
    scale = (_fp16(b[..., 208:210])[..., None] * sc).reshape(n, k // 16)
    return Blocks(8, 16, _shift8(q.reshape(n, k // 16, 16), 32), scale, None, "Q6_K", 128)


_IMPORTS = {
    _T.Q4_0: _q4_0,
    _T.Q4_1: _q4_1,
    _T.Q5_0: _q5_0,
    _T.Q5_1: _q5_1,
    _T.Q8_0: _q8_0,
    _T.Q4_K: _q4_k,
    _T.Q5_K: _q5_k,
    _T.Q6_K: _q6_k,
}


def _codes(blocks: Blocks) -> np.ndarray:
    """MatMulNBits' B bytes back to one code per weight, [N, K/block, block]."""
    if blocks.bits == 8:
        return blocks.codes
    return np.stack([blocks.codes & np.uint8(0x0F), blocks.codes >> np.uint8(4)], axis=-1).reshape(blocks.n, -1, blocks.block_size)


def dequantize(blocks: Blocks) -> np.ndarray:
    """float32 [N, K], in gguf.quants' order of operations (scale·q, then + offset), so it equals
    gguf.quants.dequantize on the file's bytes bit for bit."""
    q = (_codes(blocks).astype(np.int16) - blocks.zero).astype(np.float32)  # exact small integers
    w = blocks.scales[..., None] * q
    if blocks.offsets is not None:
        w = w.reshape(blocks.n, -1, _OFFSET_GROUP) + blocks.offsets[..., None]
    return w.reshape(blocks.n, blocks.k)


def _correction(blocks: Blocks) -> np.ndarray | None:
    """C[N, K/32] with w = kernel's scale·(code − 2^(bits−1)) + C per 32 weights; None where zero."""
    if blocks.offsets is None:
        return None
    shift = (1 << (blocks.bits - 1)) - blocks.zero  # 8 for 4-bit with a minimum, 0 for 8-bit
    # Rounded to float32 once, from float64: the only rounding the import adds, and only to the sum.
    return (shift * blocks.scales.astype(np.float64) + blocks.offsets).astype(np.float32)


def _names(name: str) -> dict[str, str]:
    # One naming scheme for both builders: a tied embedding and LM head then share codes and scales.
    return {part: f"{name}_{part}" for part in ("codes", "scales", "correction")}


def _const(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _weights(blocks: Blocks, name: str) -> list[TensorProto]:
    names = _names(name)
    tensors = [numpy_helper.from_array(blocks.codes, names["codes"]), numpy_helper.from_array(blocks.scales, names["scales"])]
    correction = _correction(blocks)
    if correction is not None:
        tensors.append(numpy_helper.from_array(correction, names["correction"]))
    return tensors


def block_sums_nodes(x: str, k: int) -> tuple[str, list[onnx.NodeProto], list[TensorProto]]:
    """sums = x summed over each 32 weights of its last axis, [..., K/32]: what the correction of every
    MatMul reading `x` multiplies. One MatMul against a 0/1 matrix (one node, any rank: a Reshape and
    ReduceSum need the shape computed, four more nodes, each costing more than the sum itself at M = 1);
    built once per input and shared by the MatMuls that read it (gate and up)."""
    name = f"{x}/sums{k}"
    groups = np.zeros((k, k // _OFFSET_GROUP), dtype=np.float32)
    groups[np.arange(k), np.arange(k) // _OFFSET_GROUP] = 1.0
    indicator = numpy_helper.from_array(groups, f"{name}_groups")
    return name, [helper.make_node("MatMul", [x, indicator.name], [name], name=f"{name}/sum")], [indicator]


def matmul_nodes(
    x: str, y: str, name: str, blocks: Blocks, accuracy_level: int = 4, sums: str | None = None
) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """y = x @ W.T for x float32 [..., K] (any rank, dynamic dims), W = dequantize(blocks), to fp32
    rounding (accuracy_level 4 quantises x to int8 in the kernel where MLAS has that path; 0 keeps fp32).
    `sums`: block_sums_nodes' output for x, where the caller shares it; else built here.

    Returns (nodes, initializers); initializer names start with `name` and match gather_nodes' ones."""
    names = _names(name)
    tensors = _weights(blocks, name)
    attrs: dict[str, Any] = dict(K=blocks.k, N=blocks.n, bits=blocks.bits, block_size=blocks.block_size, accuracy_level=accuracy_level)
    if blocks.offsets is None:
        return [
            helper.make_node("MatMulNBits", [x, names["codes"], names["scales"]], [y], name=name, domain="com.microsoft", **attrs)
        ], tensors
    # No zero_points input: the symmetric kernel is the fast one. The minimum and the 8·scale the
    # kernel took off come back as sums @ C.T; C is stored [N, K/32], the orientation gather_nodes
    # gathers rows from, so one initializer serves both (ONNX Runtime folds the Transpose at load).
    nodes: list[onnx.NodeProto] = []
    if sums is None:
        sums, nodes, more = block_sums_nodes(x, blocks.k)
        tensors += more
    main, transposed, fix = (f"{name}/{s}" for s in ("main", "correction_t", "fix"))
    nodes += [
        helper.make_node("MatMulNBits", [x, names["codes"], names["scales"]], [main], name=name, domain="com.microsoft", **attrs),
        helper.make_node("Transpose", [names["correction"]], [transposed], name=f"{name}/transpose", perm=[1, 0]),
        helper.make_node("MatMul", [sums, transposed], [fix], name=f"{name}/correct"),
        helper.make_node("Add", [main, fix], [y], name=f"{name}/add"),
    ]
    return nodes, tensors


def gather_nodes(ids: str, y: str, name: str, blocks: Blocks) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """y = dequantize(blocks)[ids] (ids int32/int64 of any shape) through GatherBlockQuantized, from the
    same codes, scales and correction initializers as matmul_nodes(…, name, blocks) (add each name once
    to a graph that uses both). Equal to dequantize bit for bit without offsets, to fp32 rounding with.

    GatherBlockQuantized takes uint8 data only with gather_axis 0 and quantize_axis last, and scales of
    data's rank; MatMulNBits insists on B [N, K/block, blob] and scales [N, K/block] (or flat). So the
    3-D codes are gathered with quantize_axis 2 (one block per last-axis row) and the scales are read
    through a Reshape to [N, K/block, 1], which ORT folds once at load."""
    names = _names(name)
    tensors = _weights(blocks, name)
    scales3, picked, shape, k_dim = (f"{name}/{s}" for s in ("scales3", "picked", "ids_shape", "k"))
    tensors += [_const(f"{name}_scales3_shape", [blocks.n, blocks.k // blocks.block_size, 1]), _const(f"{name}_k", [blocks.k])]
    nodes = [
        helper.make_node("Reshape", [names["scales"], f"{name}_scales3_shape"], [scales3], name=f"{name}/scales3"),
        # No zero_points: for uint8 data the kernel then subtracts 2^(bits-1), as MatMulNBits does.
        helper.make_node(
            "GatherBlockQuantized",
            [names["codes"], ids, scales3],
            [picked],
            name=f"{name}/gather",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=2,
            block_size=blocks.block_size,
            bits=blocks.bits,
        ),  # -> [ids..., K/block, block]
    ]
    if blocks.offsets is not None:
        rows, column, fixed = (f"{name}/{s}" for s in ("correction_rows", "correction_column", "fixed"))
        tensors.append(_const(f"{name}_last_axis", [-1]))
        nodes += [  # block_size is 32 here, so [ids..., K/32, 1] broadcasts over each block's 32 weights
            helper.make_node("Gather", [names["correction"], ids], [rows], name=f"{name}/correction_rows", axis=0),
            helper.make_node("Unsqueeze", [rows, f"{name}_last_axis"], [column], name=f"{name}/correction_column"),
            helper.make_node("Add", [picked, column], [fixed], name=f"{name}/offset"),
        ]
        picked = fixed
    nodes += [
        helper.make_node("Shape", [ids], [shape], name=f"{name}/ids_shape"),
        helper.make_node("Concat", [shape, f"{name}_k"], [k_dim], name=f"{name}/out_shape", axis=0),
        helper.make_node("Reshape", [picked, k_dim], [y], name=f"{name}/unblock"),
    ]
    return nodes, tensors
