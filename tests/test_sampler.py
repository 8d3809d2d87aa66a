"""The vectorised sampler (server/engine/sampler.py) against definitions computed the slow way: each
filter's set of tokens, draws that follow the distribution it leaves, and every row's token the same
as when it is sampled alone (seeded, with penalties and logit bias)."""

from __future__ import annotations

import numpy as np
import pytest

from server.engine.sampler import BLOCK, Sampler, _above, _nucleus, adjust, choose, log_sum_exp, sample
from server.engine.sampling import SamplingParams, log_softmax


def draw(logits: np.ndarray, params: SamplingParams, times: int, seed: int = 0) -> np.ndarray:
    """`times` draws from one distribution, as `times` rows of one step (each with its own generator)."""
    rows = np.repeat(logits[None, :], times, axis=0)
    return choose(rows, params, [np.random.default_rng([seed, i]) for i in range(times)])[0]


def reference(probs: np.ndarray, *, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> np.ndarray:
    """The distribution a filter leaves, by sorting the whole vocabulary: min-p, then top-k, then top-p
    over what is left, renormalised."""
    keep = probs >= min_p * probs.max()
    order = [int(t) for t in np.argsort(-probs, kind="stable") if keep[t]]
    if top_k:
        order = order[:top_k]
    mass = probs[order] / probs[order].sum()
    if top_p < 1.0:
        order = order[: int(np.searchsorted(np.cumsum(mass), top_p)) + 1]
    out = np.zeros_like(probs)
    out[order] = probs[order] / probs[order].sum()
    return out


def test_filters_on_a_small_distribution() -> None:
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert set(draw(logits, SamplingParams(temperature=0.0), 5).tolist()) == {1}
    assert set(draw(logits, SamplingParams(temperature=1.0, top_k=1), 50).tolist()) == {1}
    assert set(draw(logits, SamplingParams(temperature=1.0, top_p=0.01), 50).tolist()) == {1}
    assert set(draw(logits, SamplingParams(temperature=1.0, top_k=2), 200).tolist()) == {1, 2}
    assert set(draw(logits, SamplingParams(temperature=1.0, min_p=0.5), 200).tolist()) == {1, 2}
    assert set(draw(logits, SamplingParams(temperature=5.0), 500).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize(
    "filters",
    [
        dict(),
        dict(top_p=0.9),
        dict(top_k=3),
        dict(min_p=0.2),
        dict(top_k=4, top_p=0.8),
        dict(min_p=0.05, top_p=0.7),
        dict(temperature=0.5, top_p=0.95),
        dict(temperature=1.7, top_k=5, min_p=0.1),
        dict(temperature=0.6, top_k=3),
        dict(temperature=0.7, min_p=0.3, top_p=0.9),
    ],
)
def test_draws_follow_the_reference_distribution(filters: dict) -> None:
    # 6 likely tokens among 3000 (three blocks, the last one short), the rest far down
    probs = np.full(3000, 1e-9)
    probs[[5, 1500, 2999, 17, 2100, 900]] = [0.4, 0.25, 0.15, 0.1, 0.06, 0.04]
    temperature = filters.pop("temperature", 1.0)
    logits = np.log(probs).astype(np.float32)
    params = SamplingParams(temperature=temperature, **filters)
    tempered = probs ** (1 / temperature)
    expected = reference(tempered / tempered.sum(), **filters)
    times = 20_000
    seen = np.bincount(draw(logits, params, times), minlength=3000) / times
    assert set(np.flatnonzero(seen)) <= set(np.flatnonzero(expected))
    assert np.abs(seen - expected).max() < 0.015, (seen[expected > 0], expected[expected > 0])


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])
def test_top_p_is_the_exact_nucleus_over_a_gemma_sized_vocabulary(scale: float) -> None:
    rng = np.random.default_rng(3)
    vocab = 262_144
    logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
    weights = np.exp(logits - logits.max()).astype(np.float32)
    probs = weights.astype(np.float64) / weights.sum(dtype=np.float64)
    order = np.argsort(-probs, kind="stable")
    expected = order[: int(np.searchsorted(np.cumsum(probs[order]), 0.9)) + 1]  # by the definition, sorting all
    tiled = weights.reshape(-1, BLOCK)
    nucleus = _nucleus(tiled, tiled.max(axis=1), None, float(weights.sum(dtype=np.float64)), 0.9)
    assert set(nucleus.tolist()) == set(expected.tolist())
    assert set(_above(tiled, tiled.max(axis=1), 1e-4).tolist()) == set(np.flatnonzero(weights >= 1e-4).tolist())


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, presence_penalty=1.5, logit_bias={3: 4.0}),
        SamplingParams(temperature=0.8, top_p=0.95, seed=1),
        SamplingParams(temperature=1.0, seed=2, frequency_penalty=0.7, logit_bias={7: -100.0, 11: 3.0}),
        SamplingParams(temperature=1.3, top_k=20, min_p=0.02, presence_penalty=-0.5),
    ],
)
def test_each_row_gets_the_token_it_gets_alone(params: SamplingParams) -> None:
    rng = np.random.default_rng(11)
    rows, vocab = 9, 5000
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    counts = [{int(t): int(c) for t, c in zip(rng.integers(0, 50, 6), rng.integers(1, 4, 6), strict=True)} for _ in range(rows)]
    seeds = [[5, r] for r in range(rows)]
    together = choose(adjust(logits, params, counts), params, [np.random.default_rng(s) for s in seeds])[0]
    for r in range(rows):
        alone = choose(adjust(logits[r : r + 1], params, counts[r : r + 1]), params, [np.random.default_rng(seeds[r])])[0]
        assert alone[0] == together[r]
    shuffled = list(reversed(range(rows)))  # the order of rows changes nothing either
    backwards = choose(
        adjust(logits[shuffled], params, [counts[r] for r in shuffled]), params, [np.random.default_rng(seeds[r]) for r in shuffled]
    )[0]
    assert backwards.tolist() == together[shuffled].tolist()


def test_penalties_and_bias_move_the_logits_by_their_definition() -> None:
    logits = np.zeros((2, 10), dtype=np.float32)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={9: 2.0})
    moved = adjust(logits, params, [{1: 2}, {}])
    assert moved[0, 1] == pytest.approx(-(0.5 + 0.25 * 2)) and moved[1, 1] == 0.0
    assert moved[0, 9] == moved[1, 9] == 2.0
    assert logits.max() == 0.0  # the step's logits are not written over


def test_log_sum_exp_over_an_echoed_prompt_keeps_its_scratch_to_a_chunk() -> None:
    from server.engine import sampler

    logits = (np.random.default_rng(2).standard_normal((300, 5000)) * 4).astype(np.float32)  # 300 positions, several chunks
    lse = log_sum_exp(logits)
    wide = logits.astype(np.float64)
    np.testing.assert_allclose(lse, np.log(np.exp(wide - wide.max(axis=1, keepdims=True)).sum(axis=1)) + wide.max(axis=1), rtol=1e-6)
    held = [buffer.size for (name, _shape), buffer in sampler._scratch.held.items() if name == "lse"]
    assert held and max(held) <= sampler._CHUNK_ELEMENTS


def test_log_sum_exp_gives_log_softmax() -> None:
    logits = (np.random.default_rng(1).standard_normal((3, 70_000)) * 4).astype(np.float32)
    lse = log_sum_exp(logits)
    for r in range(3):
        np.testing.assert_allclose(logits[r] - lse[r], log_softmax(logits[r]), atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_a_step_samples_each_row_as_alone_and_scores_it_from_its_raw_logits(temperature: float) -> None:
    """sample() over a step: chunks of rows, logprobs from the sampling pass itself at temperature 1."""
    rng = np.random.default_rng(8)
    rows, vocab = 6, 120_000  # two rows a chunk
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    params = SamplingParams(temperature=temperature, top_p=0.9)
    counts: list[dict[int, int]] = [{} for _ in range(rows)]
    tokens, lse = sample(logits, params, [np.random.default_rng([3, r]) for r in range(rows)], counts, scored=True)
    assert lse is not None
    np.testing.assert_allclose(
        lse, [np.log(np.exp(logits[r].astype(np.float64) - logits[r].max()).sum()) + logits[r].max() for r in range(rows)], rtol=1e-6
    )
    for r in range(rows):
        alone, _ = sample(logits[r : r + 1], params, [np.random.default_rng([3, r])], counts[r : r + 1], scored=False)
        assert alone[0] == tokens[r]


def test_a_heavy_tail_below_temperature_1_is_weighed_whole() -> None:
    """Where the cuts of the raw weights leave the nucleus unsettled (a tail of many small tokens), the
    row is weighed whole at its temperature: draws still follow the reference."""
    probs = np.full(5000, 0.5 / 4996)
    probs[[0, 1000, 2000, 4999]] = [0.2, 0.15, 0.1, 0.05]
    params = SamplingParams(temperature=0.9, top_p=0.6)
    tempered = probs ** (1 / 0.9)
    expected = reference(tempered / tempered.sum(), top_p=0.6)
    seen = np.bincount(draw(np.log(probs).astype(np.float32), params, 20_000), minlength=5000) / 20_000
    assert set(np.flatnonzero(seen)) <= set(np.flatnonzero(expected))
    assert np.abs(seen - expected).max() < 0.015


def test_rows_sampled_on_several_threads_get_the_tokens_of_one_thread() -> None:
    rng = np.random.default_rng(4)
    rows, vocab = 7, 200_000  # past the size from which a step is split over threads
    logits = (rng.standard_normal((rows, vocab)) * 3).astype(np.float32)
    params = SamplingParams(temperature=0.8, top_p=0.95, frequency_penalty=0.3, logit_bias={1: 2.0})
    counts = [{r: 2, 100 + r: 1} for r in range(rows)]
    runs = {}
    for threads in (1, 2, 3):
        tokens, lse = Sampler(threads).sample(logits, params, [np.random.default_rng([9, r]) for r in range(rows)], counts, scored=True)
        assert lse is not None
        runs[threads] = (tokens.tolist(), lse.tolist())
    assert runs[1] == runs[2] == runs[3]
    np.testing.assert_allclose(runs[1][1], log_sum_exp(logits), rtol=1e-6)
