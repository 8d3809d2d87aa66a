"""The prefix cache and chunked prefill in process, on both tiny graph kinds (optimum's CodeGen with
position_ids, onnxruntime-genai's fused Llama): a reused prefix gives the cold prefill's greedy text
and logits within the graph's own tolerance, a seeded sample does not depend on it, the budget is
kept by evicting the least recently used, salts isolate, and a long prompt goes in chunk by chunk
between the decode steps of the rows already running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from server.engine import Engine, Prompt, SamplingParams, Scheduler, Usage
from server.engine.kvcache import HostCache
from server.engine.prefix_cache import PrefixCache
from tests.conftest import TINY, TINY_LLAMA
from tests.engine_helpers import Steps, fold

NO_EOS = {0: -100.0}
GRID = 16  # a fixed grid for the tests that count reused tokens
FILE = '''import os


def walk(top):
    """Every file below top, depth first."""
    for entry in os.scandir(top):
        if entry.is_dir():
            yield from walk(entry.path)
        else:
            yield entry.path
'''


@pytest.fixture(scope="module", params=[TINY, TINY_LLAMA])
def engines(request, tiny_repo: Path, tiny_llama_repo: Path) -> tuple[Engine, Engine]:
    """(with the prefix cache, on a grid of GRID, without) on the same export."""
    repository = tiny_repo if request.param == TINY else tiny_llama_repo
    return (
        Engine.load(repository, request.param, threads=1, prefix_cache_mb=8, reuse_grid=GRID),
        Engine.load(repository, request.param, threads=1, prefix_cache_mb=0, reuse_grid=GRID),
    )


@pytest.fixture(scope="module", params=[TINY, TINY_LLAMA])
def exact(request, tiny_repo: Path, tiny_llama_repo: Path) -> Engine:
    """With the prefix cache on its measured exact grid (the default), as served."""
    repository = tiny_repo if request.param == TINY else tiny_llama_repo
    return Engine.load(repository, request.param, threads=1, prefix_cache_mb=8)


def run(engine: Engine, text: str, params: SamplingParams, salt: str = "") -> tuple[dict[int, str], Usage]:
    prompt = engine.prompter.prepare(text, params.max_tokens)
    prompt.cache_salt = salt
    return fold(engine.generate(prompt, params))


def editor_prompts(engine: Engine) -> list[str]:
    """The file typed on, as an editor sends it: each prompt the one before and a few more characters,
    short enough for the tiny models' context."""
    ids = engine.prompter.encode(FILE)
    cut = engine.prompter.tokenizer.decode(ids[:70])
    return [cut[: len(cut) - 40 + step] for step in range(0, 41, 8)]


def test_greedy_text_with_a_reused_prefix_is_the_cold_prefills(engines: tuple[Engine, Engine]) -> None:
    warm, cold = engines
    params = SamplingParams(max_tokens=12, temperature=0.0, logit_bias=NO_EOS)
    reused = []
    for text in editor_prompts(warm):
        got, usage = run(warm, text, params)
        assert got == run(cold, text, params)[0]
        reused.append(usage.cached_tokens)
    assert reused[0] == 0 and all(r > 0 for r in reused[1:]), reused  # each prompt found the one before
    assert all(r % GRID == 0 for r in reused)
    # the same prompt again: all but its last token reused, down to the grid
    _, again = run(warm, editor_prompts(warm)[-1], params)
    assert again.cached_tokens == (again.prompt_tokens - 1) // GRID * GRID


def test_on_the_measured_grid_a_reused_prefix_gives_the_cold_prefills_bits(exact: Engine) -> None:
    """Each editor prompt on the one before: the last position's logits (what picks the first token)
    are the cold prefill's to the bit, and the prefix reused is the longest on the grid."""
    assert exact.reuse.exact and exact.reuse.grid in (1, 2, 4, 8, 16, 32, 64)
    cold = Engine.__new__(Engine)  # the same session without a prefix cache: no second load
    cold.__dict__.update(exact.__dict__, prefix_cache=None)
    params = SamplingParams(max_tokens=1, temperature=0.0)
    for i, text in enumerate(editor_prompts(exact)):
        prompt = exact.prompter.prepare(text, 1)
        prompt.cache_salt = "bits"
        warm = _prefilled(exact, prompt, params)
        if i:
            assert warm.cached > 0 and warm.cached % exact.reuse.grid == 0
        assert np.array_equal(warm.last, _prefilled(cold, prompt, params).last), (exact.reuse.grid, warm.cached)


def test_the_next_request_finds_its_prefix_in_the_buffers_the_one_before_left(exact: Engine) -> None:
    """One request at a time, as an editor sends them: the last request's in-place buffers hold its
    prompt when it ends, and the next prompt that starts the same way takes them and copies none of
    its cached prefix (fused graph); its text and logits are still a cold prefill's."""
    if not exact.runner.share_buffer:
        pytest.skip("a copying graph's cache is made anew at each step: nothing is left in place")
    cold = Engine.__new__(Engine)
    cold.__dict__.update(exact.__dict__, prefix_cache=None)
    params = SamplingParams(max_tokens=3, temperature=0.0, logit_bias=NO_EOS)
    texts = editor_prompts(exact)[1:]
    expected = [(_prefilled(cold, exact.prompter.prepare(t, 3), params).last, run(cold, t, params)[0]) for t in texts]
    found = []
    for text, (logits, completion) in zip(texts, expected, strict=True):
        prompt = exact.prompter.prepare(text, 3)
        prompt.cache_salt = "in place"
        pending = exact.start(prompt, params)
        found.append((pending.cached, getattr(pending.cache, "found", None)))
        while pending.remaining:
            exact.prefill(pending)
        assert np.array_equal(pending.last, logits)
        del pending  # its buffers back to the pool, unlabelled: the request below leaves them labelled
        assert run(exact, text, params, salt="in place")[0] == completion
    # the first prompt found only the prefix cache's copy; each after it, the buffers of the one before
    assert all(cached > 0 and got == cached for cached, got in found[1:]), found


def _prefilled(engine: Engine, prompt: Prompt, params: SamplingParams):
    pending = engine.start(prompt, params)
    while pending.remaining:
        engine.prefill(pending)
    return pending


def test_logits_on_a_reused_prefix_agree_within_the_graphs_own_tolerance(engines: tuple[Engine, Engine]) -> None:
    """The graph's own tolerance: one prefill of the prompt against feeding it one token at a time. A
    prefill on top of a stored prefix differs from the cold prefill by no more than that."""
    engine = engines[1]
    runner = engine.runner
    ids = engine.prompter.prepare(editor_prompts(engine)[-1], 4).ids
    whole, _ = runner.prefill(ids, all_logits=True)
    steps, cache = runner.prefill(ids[:1], all_logits=True)
    stepwise = [steps[-1]]
    for token in ids[1:]:
        logits, cache = runner.decode([token], cache)
        stepwise.append(logits[0])
    tolerance = float(np.abs(whole - np.stack(stepwise)).max())
    assert tolerance < 1e-2
    split = len(ids) - 9
    _, head = runner.prefill(ids[:split])
    rest, _ = runner.prefill(ids[split:], all_logits=True, past=HostCache.holding(head.read(0)))
    assert float(np.abs(rest - whole[split:]).max()) <= max(tolerance, 1e-5)


def test_a_seeded_sample_does_not_depend_on_the_cache(engines: tuple[Engine, Engine]) -> None:
    warm, cold = engines
    params = SamplingParams(max_tokens=16, temperature=0.8, seed=7, n=3, logit_bias=NO_EOS)
    text = editor_prompts(warm)[-1]
    run(warm, text[:-6], SamplingParams(max_tokens=2))  # its prefix is stored
    got, usage = run(warm, text, params)
    assert usage.cached_tokens > 0 and got == run(cold, text, params)[0]


def test_a_finished_requests_generated_tokens_are_reused_too(engines: tuple[Engine, Engine]) -> None:
    """What a row generated stays in the cache with its prompt: the next prompt, that one followed by
    the completion (as an editor sends once the user accepts it), reuses all of it but the last token."""
    warm, _ = engines
    ids = warm.prompter.prepare(editor_prompts(warm)[-1], 10).ids
    prompt = Prompt(ids=ids[: len(ids) // GRID * GRID - 6], text="", cache_salt="generated")  # 10 short of the grid
    params = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    assert [e for e in warm.generate(prompt, params) if isinstance(e, Usage)][0].completion_tokens == 10
    logits, cache = warm.runner.prefill(prompt.ids)
    generated = [int(logits[-1].argmax())]  # the same greedy tokens, straight from the graph
    for _ in range(9):
        step, cache = warm.runner.decode(generated[-1:], cache)
        generated.append(int(step[0].argmax()))
    accepted = Prompt(ids=prompt.ids + generated, text="", cache_salt="generated")
    usage = [e for e in warm.generate(accepted, SamplingParams(max_tokens=1)) if isinstance(e, Usage)][0]
    # its cache held the prompt and 9 of its 10 tokens: reused up to the grid, 6 tokens past the prompt
    assert usage.cached_tokens == (len(prompt.ids) + 9) // GRID * GRID == len(prompt.ids) + 6


def test_salts_isolate_and_opting_out_neither_reuses_nor_keeps(engines: tuple[Engine, Engine]) -> None:
    warm, _ = engines
    text = editor_prompts(warm)[2] + " # salted"
    params = SamplingParams(max_tokens=2, temperature=0.0)
    run(warm, text, params, salt="key-a")
    assert run(warm, text, params, salt="key-b")[1].cached_tokens == 0
    assert run(warm, text, params, salt="key-a")[1].cached_tokens > 0
    prompt = warm.prompter.prepare(text + " once", 2)
    prompt.cache_salt, prompt.cache_prompt = "key-c", False
    assert [e for e in warm.generate(prompt, params) if isinstance(e, Usage)][0].cached_tokens == 0
    assert run(warm, text + " once", params, salt="key-c")[1].cached_tokens == 0  # nothing was kept


def test_the_budget_is_kept_by_evicting_the_least_recently_used() -> None:
    rng = np.random.default_rng(0)

    def positions(count: int) -> dict[str, np.ndarray]:
        return {"past_key_values.0.key": rng.standard_normal((1, 2, count, 4)).astype(np.float32)}

    per_token = 2 * 4 * 4
    cache = PrefixCache(budget_bytes=250 * per_token)
    prompts = [[p] + list(range(100, 200)) for p in range(4)]  # 101 tokens each, apart from the first token
    stored = {}
    for ids in prompts[:2]:
        stored[ids[0]] = positions(len(ids))
        cache.insert("", ids, lambda a, b, kv=stored[ids[0]]: {k: v[:, :, a:b] for k, v in kv.items()})
    assert cache.stats.bytes == 202 * per_token and cache.stats.evictions == 0
    count, runs = cache.lookup("", prompts[0] + [7])  # prompt 0 used: prompt 1 is now the oldest
    key = "past_key_values.0.key"
    assert count == 101 and np.array_equal(np.concatenate([r[key] for r in runs], axis=2), stored[0][key])
    count, runs = cache.lookup("", prompts[0] + [7], multiple=16)  # cut down to the reuse grid
    assert count == 96 and np.array_equal(np.concatenate([r[key] for r in runs], axis=2), stored[0][key][:, :, :96])
    extra = positions(101)
    cache.insert("", prompts[2], lambda a, b: {k: v[:, :, a:b] for k, v in extra.items()})
    assert cache.stats.bytes <= 250 * per_token and cache.stats.evictions == 1
    assert cache.lookup("", prompts[1] + [7])[0] == 0 and cache.lookup("", prompts[0] + [7])[0] == 101
    # a prompt that leaves a stored one part way splits it: both still found, nothing counted twice
    cache.insert("", prompts[0][:50] + [999], lambda a, b: {k: v[:, :, a - 40 : b - 40] for k, v in extra.items()})
    assert cache.lookup("", prompts[0][:50] + [999, 1])[0] == 51 and cache.lookup("", prompts[0] + [7])[0] == 101
    assert cache.stats.bytes <= 250 * per_token


def test_chunked_prefill_gives_the_same_text_and_goes_in_between_decode_steps(tiny_llama_repo: Path) -> None:
    chunked = Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1, prefill_chunk_tokens=16, reuse_grid=GRID)
    whole = Engine.load(tiny_llama_repo, TINY_LLAMA, threads=1, prefill_chunk_tokens=512, reuse_grid=GRID)
    long_text = editor_prompts(whole)[-1]
    params = SamplingParams(max_tokens=8, temperature=0.0, logit_bias=NO_EOS)
    assert len(chunked.prompter.prepare(long_text, 8).ids) > 3 * 16
    assert run(chunked, long_text, params)[0] == run(whole, long_text, params)[0]

    steps = Steps(hold_at=2)  # the worker holds at the short request's second step, mid-decode
    scheduler = Scheduler(chunked, 16, 64, prefill_tokens=16, observer=steps.append)

    async def both() -> None:
        async def collect(text: str, params: SamplingParams) -> None:
            async for _ in scheduler.submit(chunked.prompter.prepare(text, params.max_tokens), params):
                pass

        running = asyncio.create_task(collect("x = 1\n", SamplingParams(max_tokens=40, logit_bias=NO_EOS)))
        while len(steps) < 2:  # the short request is decoding
            await asyncio.sleep(0.001)
        long = asyncio.create_task(collect(long_text, params))
        await asyncio.sleep(0)  # the task runs to its first wait: its request is in the worker's inbox
        steps.release()
        await asyncio.gather(running, long)

    try:
        asyncio.run(both())
    finally:
        scheduler.close()
    # the long prompt went in one chunk per decode step of the running row, not all before the next one
    interleaved = [s for s in steps if s.prefilled]
    assert len(interleaved) >= 3 and max(s.prefilled for s in interleaved) <= 16


@pytest.mark.bundled
def test_a_budget_too_small_for_one_prompt_leaves_the_cache_off_and_serves_as_before(
    bundled_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SmolLM2 keeps 45 KB a token: 8 MB holds less than one 2,048-token prompt."""
    with caplog.at_level("WARNING", logger="slipstream.engine"):
        engine = Engine.load(bundled_repo, "smollm2-135m", threads=2, prefix_cache_mb=8)
    assert engine.prefix_cache is None and engine.cache_stats.budget_bytes == 0
    assert [r.message for r in caplog.records if "prefix cache off" in r.message and "prefix_cache_mb=8" in r.message]
    text = "def fibonacci(n):\n" * 30
    params = SamplingParams(max_tokens=6, temperature=0.0)
    first, usage = run(engine, text, params)
    again, second = run(engine, text, params)
    assert first == again and usage.cached_tokens == second.cached_tokens == 0
