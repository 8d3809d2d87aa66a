"""The KV cache's rewind, what speculative decoding stands on: a step that wrote several tokens per row
(a verify pass over drafts), then each row forgetting the tokens it rejected, decodes on exactly as if
the rejected tokens had never been written. On both graph kinds (optimum's, attending through the mask;
the fused GroupQueryAttention graph, rows packed) and every host storage (copying arrays, in-place
buffers, buffers in OrtValues)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.engine import Engine
from server.engine.kvcache import DeviceBuffers, HostCache, KVCache, SharedBuffers
from server.engine.runner import Runner
from tests.conftest import TINY, TINY_LLAMA

PROMPTS = ["def heappush(heap, item):\n    heap.append(item)\n    "]
DRAFT = 4  # tokens each row writes in the multi-token step


@pytest.fixture(scope="module", params=["optimum", "fused"])
def engine(request, tiny_fp32_repo: Path, tiny_llama_repo: Path) -> Engine:
    """optimum's graph in fp32 (its INT8 graph quantises activations over the whole input, so a
    multi-token step moves a row's logits by ~1e-2), and the fused graph as the store builds it."""
    if request.param == "fused":
        return Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1)
    return Engine.load(tiny_fp32_repo, TINY, threads=1)


def _runners(engine: Engine, repository: Path) -> dict[str, Runner]:
    """The engine's own runner and, for the fused graph, its other storages."""
    if not engine.runner.share_buffer:
        return {"copying": engine.runner}  # optimum's graph takes position_ids: it always copies
    onnx_file = repository / engine.manifest.name / engine.manifest.onnx_file
    in_ortvalues = Runner(onnx_file, 1)
    in_ortvalues.kv_device = "cpu"
    return {"in place": engine.runner, "copying": Runner(onnx_file, 1, share_buffer=False), "OrtValues": in_ortvalues}


def _decode_on(runner: Runner, cache: KVCache, tokens: list[int], steps: int) -> list[np.ndarray]:
    """Greedy steps from `tokens` (one per row): each step's [rows, V] logits."""
    out = []
    for _ in range(steps):
        logits, cache = runner.decode(tokens, cache)
        out.append(logits)
        tokens = [int(t) for t in logits.argmax(axis=1)]
    return out


def test_a_rewound_step_decodes_on_as_if_its_rejected_tokens_were_never_written(engine: Engine, tiny_llama_repo: Path) -> None:
    ids = engine.prompter.encode(PROMPTS[0])
    for name, runner in _runners(engine, tiny_llama_repo).items():
        logits, cache = runner.prefill(ids)
        first, accepted = int(logits[-1].argmax()), 7
        # the reference: the first token, then one accepted draft token, decoded a step at a time
        reference = _decode_on(runner, runner.decode([accepted], runner.decode([first], cache)[1])[1], [3], 6)
        # one step over the first token and three drafts, of which the first is kept and two rewound
        _, written = runner.forward(np.asarray([[first, accepted, 21, 22]]), cache, keep=DRAFT)
        rewound = written.rewind([DRAFT - 2])
        assert rewound.tokens().tolist() == [len(ids) + 2], name
        assert type(rewound) is type(written), name  # the same storage, nothing copied out
        after = _decode_on(runner, rewound, [3], 6)
        for got, want in zip(after, reference, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)


def test_rows_rewound_by_different_counts_decode_together_as_alone(engine: Engine, tiny_llama_repo: Path) -> None:
    """Row 0 keeps its whole draft, row 1 all but its first token dropped; joined, they decode on as each
    would alone. The fused graph's GroupQueryAttention (ONNX Runtime 1.31, CPU) takes several new tokens
    with a past only for one row ("batch_size must be 1 when sequence_length > 1 and past context is
    given"): each row's draft goes through a step of its own; optimum's graph takes both rows at once too."""
    ids = engine.prompter.encode(PROMPTS[0])
    written_ids = [[30, 31, 32], []]
    for name, runner in _runners(engine, tiny_llama_repo).items():
        logits, _ = runner.prefill(ids)
        first = int(logits[-1].argmax())
        rows = [np.asarray([[first, 30, 31, 32]]), np.asarray([[first, 40, 41, 42]])]
        # a step writes into an in-place cache's own buffers: each row steps from a prefill of its own
        caches = [
            runner.forward(row, runner.prefill(ids)[1], keep=DRAFT)[1].rewind([drop])
            for row, drop in zip(rows, (0, DRAFT - 1), strict=True)
        ]
        joined = caches[0].join(caches[1])
        if not runner.share_buffer and engine.manifest.name == TINY:  # optimum's graph: both rows in one step
            _, both_written = runner.forward(np.concatenate(rows), runner.prefill(ids)[1].repeat(2), keep=DRAFT)
            joined = both_written.rewind([0, DRAFT - 1])
        assert joined.tokens().tolist() == [len(ids) + DRAFT, len(ids) + 1], name
        both = _decode_on(runner, joined, [9, 9], 4)
        for row, kept in enumerate(written_ids):
            _, alone = runner.prefill([*ids, first, *kept])
            expected = _decode_on(runner, alone, [9], 4)
            for got, want in zip(both, expected, strict=True):
                np.testing.assert_allclose(got[row], want[0], atol=1e-4, err_msg=f"{name} row {row}")


def test_a_row_cannot_drop_more_than_it_holds() -> None:
    cache = HostCache.holding({"past_key_values.0.key": np.zeros((1, 1, 3, 2), np.float32)})
    assert cache.rewind([3]).tokens().tolist() == [0] and cache.rewind([3]).length == 0
    with pytest.raises(ValueError, match="cannot drop 4"):
        cache.rewind([4])


def test_every_storage_rewinds_in_its_own_kind() -> None:
    past = {"past_key_values.0.key": np.arange(24, dtype=np.float32).reshape(2, 1, 6, 2)}
    mask = np.ones((2, 6), dtype=np.int64)
    for cache in (
        HostCache(past, mask),
        SharedBuffers.adopt(HostCache(past, mask), 8),
        DeviceBuffers.adopt(HostCache(past, mask), 8, "cpu"),
    ):
        rewound = cache.rewind([2, 3])
        assert type(rewound) is type(cache) and rewound.tokens().tolist() == [4, 3] and rewound.length == 4
        np.testing.assert_array_equal(rewound.read(1)["past_key_values.0.key"], past["past_key_values.0.key"][1:, :, :3])
