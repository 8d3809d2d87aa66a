"""GGUF blocks into MatMulNBits / GatherBlockQuantized: the import holds the file's values bit for bit
(against gguf.quants' own dequantiser), and the ONNX Runtime graphs compute with them."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize as gguf_quantize
from onnx import TensorProto, helper

from server.models.gguf_blocks import (
    Blocks,
    UnsupportedBlock,
    blocks_from_gguf,
    dequantize,
    gather_nodes,
    matmul_nodes,
)

T = gguf.GGMLQuantizationType
QUANTISABLE = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)  # gguf.quants can write these itself
K_QUANTS = (T.Q4_K, T.Q5_K, T.Q6_K)  # only read: random blocks with sane fp16 d/dmin
SUPPORTED = QUANTISABLE + K_QUANTS
N, K = 24, 512  # K a multiple of the K-quants' 256-weight super-blocks


def _fp16_bytes(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.uniform(1e-3, 2e-2, shape).astype(np.float16).view(np.uint8).reshape(*shape[:-1], -1)


def make_raw(qtype: T, n: int = N, k: int = K, seed: int = 0) -> np.ndarray:
    """[n, bytes per row] as GGUFReader gives a tensor's data."""
    rng = np.random.default_rng(seed)
    if qtype in QUANTISABLE:
        return gguf_quantize(rng.standard_normal((n, k)).astype(np.float32) * 0.05, qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n, k // block, type_size), dtype=np.uint8)
    if qtype == T.Q6_K:
        raw[..., 208:210] = _fp16_bytes(rng, (n, k // block, 1))  # d is the block's last field
    else:
        raw[..., 0:4] = _fp16_bytes(rng, (n, k // block, 2))  # d, dmin lead Q4_K and Q5_K
    return raw.reshape(n, -1)


def assert_bitwise(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape
    differ = ours.view(np.uint32) != theirs.view(np.uint32)
    assert not differ.any(), f"{differ.sum()} of {differ.size} weights differ, first at {np.argwhere(differ)[0]}"


def session(
    nodes: list[onnx.NodeProto], tensors: list[TensorProto], inputs: list[onnx.ValueInfoProto], outputs: list[str]
) -> ort.InferenceSession:
    unique = list({t.name: t for t in tensors}.values())  # a tied graph names shared weights twice
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], unique)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_dequantize_is_bit_exact(qtype: T) -> None:
    raw = make_raw(qtype)
    blocks = blocks_from_gguf(raw, qtype, (N, K))
    assert blocks.qtype == qtype.name and blocks.codes.dtype == np.uint8
    assert blocks.codes.shape == (N, K // blocks.block_size, blocks.block_size * blocks.bits // 8)
    assert_bitwise(dequantize(blocks), gguf_dequantize(raw, qtype))


def test_layout_matches_the_brief() -> None:
    kinds = {t.name: (b.bits, b.block_size, b.offsets is not None) for t in SUPPORTED for b in [blocks_from_gguf(make_raw(t), t, (N, K))]}
    assert kinds == {
        "Q4_0": (4, 32, False),
        "Q4_1": (4, 32, True),
        "Q5_0": (8, 32, False),
        "Q5_1": (8, 32, True),
        "Q8_0": (8, 32, False),
        "Q4_K": (4, 32, True),
        "Q5_K": (8, 32, True),
        "Q6_K": (8, 16, False),
    }


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_matmul_nodes_compute_x_at_w(qtype: T) -> None:
    raw = make_raw(qtype, seed=1)
    weight = gguf_dequantize(raw, qtype).astype(np.float64)
    nodes, tensors = matmul_nodes("x", "y", "w", blocks_from_gguf(raw, qtype, (N, K)), accuracy_level=0)
    # the weight's initializers are named after it; the block sums' after the input they sum (shared by its readers)
    assert all(t.name.startswith(("w", "x/sums")) for t in tensors)
    rng = np.random.default_rng(2)
    for shape in ((1, K), (5, K), (2, 3, K)):
        dims = ["batch", "seq", "k"][-len(shape) :]
        run = session(nodes, tensors, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], ["y"])
        x = rng.standard_normal(shape).astype(np.float32)
        expected = x.astype(np.float64) @ weight.T
        got = run.run(None, {"x": x})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), (qtype.name, shape)


@pytest.mark.parametrize("qtype", (T.Q4_1, T.Q6_K), ids=lambda t: t.name)
def test_matmul_nodes_int8_activations_are_close(qtype: T) -> None:
    # The default accuracy_level 4 quantises x to int8 per block where MLAS can: about 1e-2 of the scale.
    raw = make_raw(qtype, seed=3)
    nodes, tensors = matmul_nodes("x", "y", "w", blocks_from_gguf(raw, qtype, (N, K)))
    run = session(nodes, tensors, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", K])], ["y"])
    x = np.random.default_rng(4).standard_normal((5, K)).astype(np.float32)
    expected = x.astype(np.float64) @ gguf_dequantize(raw, qtype).astype(np.float64).T
    assert np.abs(run.run(None, {"x": x})[0] - expected).max() <= 3e-2 * np.abs(expected).max()


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_gather_nodes_pick_dequantized_rows(qtype: T) -> None:
    raw = make_raw(qtype, seed=5)
    blocks = blocks_from_gguf(raw, qtype, (N, K))
    weight = dequantize(blocks)
    nodes, tensors = gather_nodes("ids", "y", "w", blocks)
    run = session(nodes, tensors, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])], ["y"])
    ids = np.array([[3, 0, N - 1], [7, 7, 1]], dtype=np.int64)
    got = run.run(None, {"ids": ids})[0]
    if blocks.offsets is None:
        assert_bitwise(got, weight[ids])  # the kernel computes float(code - zero) * scale, as gguf does
    else:
        assert got.shape == weight[ids].shape
        assert np.abs(got - weight[ids]).max() <= 1e-6 * np.abs(weight).max()


@pytest.mark.parametrize("qtype", (T.Q4_K, T.Q8_0), ids=lambda t: t.name)
def test_tied_embedding_and_head_share_initializers(qtype: T) -> None:
    raw = make_raw(qtype, seed=6)
    blocks = blocks_from_gguf(raw, qtype, (N, K))
    head, head_tensors = matmul_nodes("h", "logits", "tok", blocks, accuracy_level=0)
    embed, embed_tensors = gather_nodes("ids", "h", "tok", blocks)
    shared = {t.name for t in head_tensors} & {t.name for t in embed_tensors}
    assert {"tok_codes", "tok_scales"} <= shared
    run = session(embed + head, head_tensors + embed_tensors, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["s"])], ["logits"])
    ids = np.array([2, 9, 4], dtype=np.int64)
    weight = gguf_dequantize(raw, qtype).astype(np.float64)
    expected = weight[ids] @ weight.T
    assert np.abs(run.run(None, {"ids": ids})[0] - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("qtype", (T.Q3_K, T.Q2_K, T.IQ4_NL, T.F16, T.BF16, T.F32), ids=lambda t: t.name)
def test_unsupported_types_are_named(qtype: T) -> None:
    with pytest.raises(UnsupportedBlock, match=qtype.name) as caught:
        blocks_from_gguf(np.zeros(4096, dtype=np.uint8), qtype, (4, 256))
    assert caught.value.qtype == qtype


def test_blocks_checks_its_shapes() -> None:
    blocks = blocks_from_gguf(make_raw(T.Q4_1), T.Q4_1, (N, K))
    with pytest.raises(ValueError):
        Blocks(4, 32, blocks.codes, blocks.scales[:, :-1], blocks.offsets, "Q4_1", 0)
    with pytest.raises(ValueError, match=r"Q4_1 tensor of \d+ bytes is not \[24, 1024\]"):
        blocks_from_gguf(make_raw(T.Q4_1), T.Q4_1, (N, K * 2))


@pytest.mark.bundled
@pytest.mark.parametrize("model", ["smollm2-135m", "gemma3-270m"])
def test_bundled_ggufs_import_bit_exact(model: str, tmp_path: Path) -> None:
    from server.models.catalog import lookup

    reader = gguf.GGUFReader(lookup(model).locate_gguf(tmp_path))
    by_type: dict[T, list[gguf.ReaderTensor]] = defaultdict(list)
    for tensor in reader.tensors:
        by_type[T(tensor.tensor_type)].append(tensor)
    held = sorted(by_type.items(), key=lambda item: item[0].name)
    print(f"{model}: " + ", ".join(f"{qtype.name} x{len(tensors)}" for qtype, tensors in held))
    checked = []
    for qtype, tensors in by_type.items():
        if qtype not in SUPPORTED:
            continue
        tensor = min(tensors, key=lambda t: t.n_bytes)  # the smallest of each type ...
        n, k = (int(d) for d in reversed(tensor.shape.tolist()))
        rows = min(n, 1024)  # ... and at most its first 1024 rows: a 262144-token embedding is 670 MB dequantised
        raw = np.asarray(tensor.data).reshape(n, -1)[:rows]
        assert_bitwise(dequantize(blocks_from_gguf(raw, qtype, (rows, k))), gguf_dequantize(raw, qtype))
        checked.append(qtype.name)
    expected = {"smollm2-135m": {"Q4_1", "Q8_0"}, "gemma3-270m": {"Q4_K", "Q6_K"}}[model]
    assert expected <= set(checked), checked
    print(f"{model}: bit-exact for {', '.join(sorted(checked))}")
