"""The engine in process on the tiny CodeGen: greedy equals optimum's reference generate on the same
graph, sampling is reproducible per seed and independent of the batch, the prompt is trimmed to fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from server.engine import Delta, DeviceError, Engine, InvalidInput, SamplingParams, Usage
from server.engine.kvcache import DeviceBuffers, HostCache, InPlace, SharedBuffers
from server.engine.runner import Runner
from tests.conftest import TINY, TINY_CONTEXT, TINY_LLAMA

PROMPT = "def heappush(heap, item):\n    "


@pytest.fixture(scope="module")
def engine(tiny_repo: Path) -> Engine:
    return Engine.load(tiny_repo, TINY, threads=1)


@pytest.fixture(scope="module")
def fused_engine(tiny_llama_repo: Path) -> Engine:
    return Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1)


def run(engine: Engine, prompt: str, **params) -> tuple[dict[int, str], dict[int, str | None], Usage]:
    texts: dict[int, str] = {}
    finish: dict[int, str | None] = {}
    usage = None
    for event in engine.generate(engine.prompter.prepare(prompt, params.get("max_tokens", 16)), SamplingParams(**params)):
        if isinstance(event, Delta):
            texts[event.index] = texts.get(event.index, "") + event.text
            finish[event.index] = event.finish_reason or finish.get(event.index)
        else:
            usage = event
    assert usage is not None
    return texts, finish, usage


def greedy_ids(engine: Engine, prompt_ids: list[int], steps: int) -> list[int]:
    logits, cache = engine.runner.prefill(prompt_ids)
    out = [int(logits[-1].argmax())]
    for _ in range(steps - 1):
        step_logits, cache = engine.runner.decode([out[-1]], cache)
        out.append(int(step_logits[0].argmax()))
    return out


def test_greedy_matches_optimum_generate_on_the_same_graph(engine: Engine, tiny_repo: Path) -> None:
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    ids = engine.prompter.encode(PROMPT)
    reference = ORTModelForCausalLM.from_pretrained(tiny_repo / TINY / "1")
    expected = reference.generate(torch.tensor([ids]), max_new_tokens=20, min_new_tokens=20, do_sample=False)
    assert greedy_ids(engine, ids, 20) == expected[0, len(ids) :].tolist()


def test_batched_rows_decode_like_single_rows(engine: Engine) -> None:
    ids = engine.prompter.encode(PROMPT)
    logits, cache = engine.runner.prefill(ids)
    batch = cache.repeat(3)
    first = int(logits[-1].argmax())
    row_logits, _ = engine.runner.decode([first, first, first], batch)
    one_logits, _ = engine.runner.decode([first], cache)
    np.testing.assert_allclose(row_logits, np.repeat(one_logits, 3, axis=0), atol=1e-4)


@pytest.mark.parametrize("which", ["engine", "fused_engine"])
def test_both_graphs_skip_the_head_for_unread_positions(request, which: str) -> None:
    engine: Engine = request.getfixturevalue(which)
    ids = engine.prompter.encode(PROMPT)
    last, _ = engine.runner.prefill(ids)
    every, _ = engine.runner.prefill(ids, all_logits=True)
    assert last.shape[0] == 1 and every.shape[0] == len(ids)
    np.testing.assert_allclose(last[-1], every[-1], atol=1e-5)


def test_same_seed_same_text_and_choices_independent_of_batch(fused_engine: Engine) -> None:
    # On the fused graph (MatMulNBits quantises activations per row and block) a row's logits do not
    # depend on the other rows. optimum's INT8 graph quantises activations per tensor, over the whole
    # batch, so there the same holds only for greedy text, not exactly for sampled text.
    engine = fused_engine
    params = dict(max_tokens=24, temperature=1.0, seed=7, logit_bias={0: -100.0})
    texts_a, _, _ = run(engine, PROMPT, n=3, **params)
    texts_b, _, _ = run(engine, PROMPT, n=3, **params)
    assert texts_a == texts_b
    assert len(set(texts_a.values())) > 1  # the rows really sample
    alone, _, _ = run(engine, PROMPT, n=1, **params)
    assert alone[0] == texts_a[0]  # a sample's text does not depend on the others in the batch
    other_seed, _, _ = run(engine, PROMPT, n=1, **{**params, "seed": 8})
    assert other_seed[0] != alone[0]


def test_max_tokens_length_and_usage(engine: Engine) -> None:
    texts, finish, usage = run(engine, PROMPT, max_tokens=10, temperature=0.0, logit_bias={0: -100.0}, n=2)
    assert finish == {0: "length", 1: "length"}
    assert usage.completion_tokens == 20 and usage.prompt_tokens == len(engine.prompter.encode(PROMPT))
    assert texts[0] == texts[1]  # greedy


def test_eos_ends_a_choice_with_stop(engine: Engine) -> None:
    # a bias this large makes EOS (token 0) the argmax at once
    texts, finish, usage = run(engine, PROMPT, max_tokens=10, temperature=0.0, logit_bias={0: 100.0})
    assert finish[0] == "stop" and texts.get(0, "") == "" and usage.completion_tokens == 1


def test_long_prompt_is_trimmed_from_the_left(engine: Engine) -> None:
    long_prompt = "".join(f"x{i} = {i}\n" for i in range(200))  # not periodic: its start and its end differ
    prompt = engine.prompter.prepare(long_prompt, max_tokens=16)
    assert len(prompt.ids) == TINY_CONTEXT - 16 and prompt.trimmed > 0
    assert prompt.ids == engine.prompter.encode(long_prompt)[-(TINY_CONTEXT - 16) :]
    _, _, usage = run(engine, long_prompt, max_tokens=16, temperature=0.0)
    assert usage.prompt_tokens_trimmed == prompt.trimmed


def test_prompt_that_cannot_fit_is_refused(engine: Engine) -> None:
    with pytest.raises(InvalidInput) as err:
        engine.prompter.prepare("x", max_tokens=TINY_CONTEXT)
    assert err.value.param == "max_tokens"
    with pytest.raises(InvalidInput) as err:
        engine.prompter.prepare([5, 10**6], max_tokens=4)
    assert err.value.param == "prompt"


def test_cancel_stops_generation(engine: Engine) -> None:
    import threading

    cancel = threading.Event()
    params = SamplingParams(max_tokens=50, temperature=0.0, logit_bias={0: -100.0})
    events = engine.generate(engine.prompter.prepare(PROMPT, 50), params, cancel)
    received = [next(events), next(events)]
    cancel.set()
    assert list(events) == [] and all(isinstance(e, Delta) for e in received)


@pytest.fixture(scope="module")
def fp32_engine(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    """optimum's graph unquantised: its INT8 graph quantises activations per tensor, over the whole
    batch, so a row's logits there move (by ~1e-2) with what else is in the batch."""
    from server.models.export import export_checkpoint

    repository = tmp_path_factory.mktemp("fp32")
    export_checkpoint(tiny_checkpoint, repository, "m", precision="fp32", log=lambda _l: None)
    return Engine.load(repository, "m", threads=1)


@pytest.mark.parametrize("which", ["fp32_engine", "fused_engine"])
def test_rows_of_different_lengths_decode_together_as_alone(request, which: str) -> None:
    """Continuous batching's base: a short prompt joined to a longer one (optimum's graph attends through
    the mask, holes and all; the fused graph packs rows at the start) decodes as it would alone, and
    goes on alone when the long one leaves."""
    engine: Engine = request.getfixturevalue(which)
    prompts = [engine.prompter.encode("def heappush(heap, item):\n    heap.append(item)\n    "), engine.prompter.encode("x = 1\n")]
    alone: list[list[np.ndarray]] = []
    caches = []
    for ids in prompts:
        logits, cache = engine.runner.prefill(ids)
        caches.append(cache)
        steps, single = [logits[-1]], cache
        for _ in range(5):
            step_logits, single = engine.runner.decode([int(steps[-1].argmax())], single)
            steps.append(step_logits[0])
        alone.append(steps)

    batch, rows = caches[0].join(caches[1]), [0, 1]
    together: list[list[np.ndarray]] = [[alone[0][0]], [alone[1][0]]]
    for step in range(5):
        if step == 2:  # the long row leaves; the short one goes on in a trimmed cache
            batch, rows = batch.keep([1]), [1]
        logits, batch = engine.runner.decode([int(together[r][-1].argmax()) for r in rows], batch)
        for i, r in enumerate(rows):
            together[r].append(logits[i])
    for r, steps in enumerate(together):
        for got, want in zip(steps, alone[r], strict=False):
            np.testing.assert_allclose(got, want, atol=2e-4)
    assert len(together[1]) == 6 and len(together[0]) == 3


def test_in_place_cache_decodes_like_the_copying_one(fused_engine: Engine, tiny_llama_repo: Path) -> None:
    """The fused graph writes new keys and values into the cache's own buffers (bound as both past and
    present): the logits equal the copying path's through joins, a row leaving and one joining (in the
    shared buffers' spare rows), and the buffers moving;
    likewise with the buffers kept in OrtValues between steps (as on a GPU; here on the CPU device)."""
    onnx_file = tiny_llama_repo / TINY_LLAMA / fused_engine.manifest.onnx_file
    shared = fused_engine.runner
    copying = Runner(onnx_file, 1, share_buffer=False)
    in_ortvalues = Runner(onnx_file, 1)
    in_ortvalues.kv_device = "cpu"
    assert shared.share_buffer and not copying.share_buffer
    prompts = [
        fused_engine.prompter.encode("def heappush(heap, item):\n    heap.append(item)\n    "),
        fused_engine.prompter.encode("x = 1\n"),
    ]
    runs: list[list[np.ndarray]] = []
    for runner in (shared, copying, in_ortvalues):
        firsts = [runner.prefill(ids) for ids in prompts]
        batch = firsts[0][1].repeat(2).join(firsts[1][1])
        tokens = [int(firsts[0][0][-1].argmax())] * 2 + [int(firsts[1][0][-1].argmax())]
        steps = []
        for step in range(12):
            if step == 4:  # a row leaves
                backing = getattr(batch, "buffers", None)
                batch, tokens = batch.keep([0, 2]), [tokens[0], tokens[2]]
                if runner is shared:  # the later row moved down inside the same buffers
                    assert backing is not None and batch.buffers is backing
            if step == 6:  # a row joins the running batch
                backing = getattr(batch, "buffers", None)
                logits, joining = runner.prefill(prompts[0])
                batch, tokens = batch.join(joining), tokens + [int(logits[-1].argmax())]
                if runner is shared:  # written into a spare row: the batch's buffers did not move
                    assert batch.buffers is backing and all(np.shares_memory(batch.past()[k], backing[k]) for k in backing)
            if step == 8 and isinstance(batch, InPlace):  # the buffers move into larger ones
                batch = type(batch).adopt(batch, batch.capacity + 1, runner.kv_device)
            before = batch.buffers if isinstance(batch, SharedBuffers) else getattr(batch, "tensors", {})
            logits, batch = runner.decode(tokens, batch)
            if isinstance(batch, SharedBuffers) and runner is shared and step > 0:  # (the first step gives the prefill room)
                assert all(batch.buffers[k] is before[k] for k in before)  # written in place, not copied
            if runner is in_ortvalues and step > 0 and step not in (4, 6, 8):
                assert isinstance(batch, DeviceBuffers)
                assert all(isinstance(v, ort.OrtValue) and v is before[k] for k, v in batch.tensors.items())
            steps.append(logits)
            tokens = [int(t) for t in logits.argmax(axis=1)]
        runs.append(steps)
    for other in runs[1:]:
        for got, want in zip(other, runs[0], strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_cuda_device_runs_or_says_what_it_needs(fused_engine: Engine, tiny_llama_repo: Path) -> None:
    onnx_file = tiny_llama_repo / TINY_LLAMA / fused_engine.manifest.onnx_file
    ids = fused_engine.prompter.encode(PROMPT)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(DeviceError, match="onnxruntime-gpu"):
            Runner(onnx_file, 1, device="cuda")
        return
    gpu = Runner(onnx_file, 1, device="cuda")  # a machine with a GPU: same greedy tokens as the CPU
    logits, cache = gpu.prefill(ids)
    tokens = [int(logits[-1].argmax())]
    for _ in range(8):
        step, cache = gpu.decode(tokens[-1:], cache)
        tokens.append(int(step[0].argmax()))
    assert tokens == greedy_ids(fused_engine, ids, 9)


@pytest.mark.parametrize("which", ["fp32_engine", "fused_engine"])
def test_a_prompt_prefilled_on_top_of_a_past_read_out_and_written_in_equals_one_prefill(request, which: str) -> None:
    """What a prefix cache stands on: a row's positions read out of a cache, written into a new one-row
    cache, and the rest of a prompt prefilled on top of it give the logits and the cache of the whole
    prompt prefilled at once (both graph kinds)."""
    engine: Engine = request.getfixturevalue(which)
    ids = engine.prompter.encode("def heappush(heap, item):\n    heap.append(item)\n    _siftdown(heap, 0, len(heap) - 1)\n")
    split = len(ids) - 7
    whole_logits, whole = engine.runner.prefill(ids, all_logits=True)
    _, head = engine.runner.prefill(ids[:split])
    past = HostCache.holding(head.read(0))
    assert past.length == split and whole.read(0, 0, split).keys() == past.past().keys()
    for key, value in whole.read(0, 0, split).items():
        np.testing.assert_allclose(past.past()[key], value, atol=1e-5)
    logits, cache = engine.runner.prefill(ids[split:], all_logits=True, past=past)
    np.testing.assert_allclose(logits, whole_logits[split:], atol=1e-4)
    assert cache.tokens().tolist() == [len(ids)]
    token = int(logits[-1].argmax())
    np.testing.assert_allclose(engine.runner.decode([token], cache)[0], engine.runner.decode([token], whole)[0], atol=1e-4)


def test_in_place_buffers_are_reused_only_once_no_cache_holds_them() -> None:
    """A gone cache's buffers serve the next one (already paged in), never buffers that a live cache,
    or a view of one, still holds."""
    from server.engine.kvcache import SharedBuffers

    run = {"past_key_values.0.key": np.ones((1, 2, 5, 4), np.float32)}

    def base(cache: SharedBuffers) -> int:
        return cache.buffers["past_key_values.0.key"].__array_interface__["data"][0]

    first = SharedBuffers.holding([run], room=8)
    held = base(first)
    second = SharedBuffers.holding([run], room=8)  # first is alive: other buffers
    assert base(second) != held
    view = first.written(np.ones((1, 6), np.int64)).past()  # a view outlives every cache on the buffers
    del first
    third = SharedBuffers.holding([run], room=8)
    assert base(third) != held
    assert np.array_equal(view["past_key_values.0.key"][:, :, :5], run["past_key_values.0.key"])
    del view
    assert base(SharedBuffers.holding([run], room=8)) == held  # now they are free: reused


def test_echoed_prompt_logprobs_are_the_graphs_own_across_prefill_chunks(tiny_llama_repo: Path) -> None:
    """Echo reduces each prefill chunk's logits as they arrive (the logprob of each next prompt token and
    its best alternatives): with chunks of 64, a long prompt's scores against one full prefill here (the fused
    graph, whose logits do not depend on how the positions are chunked)."""
    from server.engine import log_softmax
    from server.models.store import model_dir

    chunked = Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1, prefill_chunk_tokens=64)
    prompter = chunked.prompter
    text = "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n" * 2
    prompt = prompter.prepare(text, 1)
    assert 64 < len(prompt.ids) <= TINY_CONTEXT - 1
    deltas = [e for e in chunked.generate(prompt, SamplingParams(max_tokens=0, echo=True, logprobs=3)) if isinstance(e, Delta)]
    scored = [lp for d in deltas for lp in d.logprobs or []]
    assert "".join(lp.token for lp in scored) == prompt.text and scored[0].logprob is None
    logits, _cache = Runner(model_dir(tiny_llama_repo, TINY_LLAMA) / prompter.manifest.onnx_file, threads=1).prefill(
        prompt.ids, all_logits=True
    )
    model = log_softmax(logits)
    for pos in range(1, len(prompt.ids)):
        expected = {}
        for t in np.argsort(-model[pos - 1], kind="stable")[:3]:
            expected.setdefault(prompter.tokenizer.decode([int(t)], skip_special_tokens=False), float(model[pos - 1, t]))
        assert scored[pos].logprob == pytest.approx(float(model[pos - 1, prompt.ids[pos]]), abs=1e-4)
        assert scored[pos].top is not None and list(scored[pos].top) == list(expected)
        assert all(scored[pos].top[k] == pytest.approx(v, abs=1e-4) for k, v in expected.items())
