"""The formulas of the research studies, pinned against cases computed by hand (and by brute force):
budgeted pass@k with k = 0, rank-score@k with ties, perplexity normalisation, run-time normalisation."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest

from eval import budget, perf, perplexity, rank
from eval.passk import largest_k, rank_score_at_k
from eval.runs import HumanEvalRun


def brute_rank_score(passed: list[bool], scores: list[float], k: int) -> float:
    """Every subset of k samples equally likely; the best score wins, a tie for best broken at random."""
    n = len(passed)
    total = 0.0
    subsets = list(itertools.combinations(range(n), k))
    for subset in subsets:
        best = max(scores[i] for i in subset)
        tied = [passed[i] for i in subset if scores[i] == best]
        total += sum(tied) / len(tied)
    return total / len(subsets)


@pytest.mark.parametrize("seed", range(6))
def test_rank_score_draws_k_from_every_sample_and_submits_the_best_that_ended(seed: int) -> None:
    """k drawn from all n samples; the best-scored of those that ended is submitted, none ended: 0. The
    same k on every problem, whatever share of its samples ended."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    samples = [
        {
            "passed": bool(rng.random() < 0.5),
            "finish_reason": "stop" if rng.random() < 0.6 else "length",
            "mean_logprob": float(rng.integers(-3, 0)),
        }
        for _ in range(n)
    ]
    for k in range(1, n + 1):
        total = 0.0
        subsets = list(itertools.combinations(range(n), k))
        for subset in subsets:
            kept = [i for i in subset if samples[i]["finish_reason"] == "stop"]
            if kept:
                best = max(samples[i]["mean_logprob"] for i in kept)
                tied = [samples[i]["passed"] for i in kept if samples[i]["mean_logprob"] == best]
                total += sum(tied) / len(tied)
        assert rank.problem_rank_scores(samples, "mean_logprob", k) == pytest.approx(total / len(subsets), abs=1e-12)


def test_paired_bootstrap_of_two_runs_on_the_same_problems() -> None:
    from eval.stats import paired_bootstrap

    better = paired_bootstrap([1.0] * 8, [0.0] * 8)
    assert (better.difference, better.low, better.high, better.p, better.significant) == (1.0, 1.0, 1.0, 0.0, True)
    same = paired_bootstrap([0.5, 0.2, 0.9], [0.5, 0.2, 0.9])
    assert (same.difference, same.p, same.significant) == (0.0, 1.0, False)
    # differences +1 and -1: resampled means 1, 0, 0, -1 equally often; p = 2 * min(3/4, 3/4), capped at 1
    mixed = paired_bootstrap([1.0, 0.0], [0.0, 1.0])
    assert mixed.difference == 0.0 and mixed.low == -1.0 and mixed.high == 1.0 and mixed.p == 1.0
    with pytest.raises(ValueError, match="the same problems on both sides"):
        paired_bootstrap([1.0], [1.0, 0.0])


def test_rank_score_by_hand() -> None:
    # k samples drawn at random, the best-scored of them submitted
    passed, scores = [True, False, False], [0.9, 0.5, 0.1]
    assert rank_score_at_k(passed, scores, 1) == pytest.approx(1 / 3)  # one sample: nothing to rank
    assert rank_score_at_k(passed, scores, 2) == pytest.approx(2 / 3)  # {0,1} yes, {0,2} yes, {1,2} no
    assert rank_score_at_k(passed, scores, 3) == 1.0
    # the right sample ranked last: it is submitted only when drawn alone
    assert rank_score_at_k(passed, [0.1, 0.5, 0.9], 1) == pytest.approx(1 / 3)
    assert rank_score_at_k(passed, [0.1, 0.5, 0.9], 2) == 0.0
    assert rank_score_at_k(passed, [0.1, 0.5, 0.9], 3) == 0.0


def test_rank_score_ties_count_the_tie_groups_mean() -> None:
    assert rank_score_at_k([True, False], [0.5, 0.5], 1) == 0.5  # either order, equally likely
    # all tied is random choice: c/n whatever k
    assert rank_score_at_k([True, False, False, True], [0.0] * 4, 1) == 0.5
    assert rank_score_at_k([True, False, False, True], [0.0] * 4, 3) == 0.5
    # a tie for the top between a right and a wrong sample, a right one below: k=2 over 6 subsets
    passed, scores = [True, False, True], [1.0, 1.0, 0.0]
    assert rank_score_at_k(passed, scores, 2) == pytest.approx((0.5 + 1 + 0) / 3)
    assert rank_score_at_k(passed, scores, 2) == pytest.approx(brute_rank_score(passed, scores, 2))


@pytest.mark.parametrize("seed", range(20))
def test_rank_score_equals_brute_force_with_ties(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 7)
    passed = [rng.random() < 0.4 for _ in range(n)]
    scores = [float(rng.choice([-1, -0.5, -0.2, 0])) for _ in range(n)]  # few values: many ties
    for k in range(1, n + 1):
        assert rank_score_at_k(passed, scores, k) == pytest.approx(brute_rank_score(passed, scores, k), abs=1e-12)


def test_rank_score_edges() -> None:
    assert rank_score_at_k([], [], 1) == 0.0  # every sample discarded: the problem scores 0
    assert rank_score_at_k([False, True], [0.0, 1.0], 10) == 1.0  # fewer than k: the best of all
    with pytest.raises(ValueError, match="verdicts but"):
        rank_score_at_k([True], [0.0, 1.0], 1)


def run_of(rows: dict[str, list[tuple[bool, float | None, str]]], model: str = "m", temperature: float = 0.8) -> HumanEvalRun:
    """A run by hand: task -> [(passed, mean logprob, finish_reason)], 2 generated tokens per sample."""
    samples = []
    for task, entries in rows.items():
        for i, (passed, mean, finish) in enumerate(entries):
            samples.append(
                {
                    "task_id": task,
                    "sample": i,
                    "passed": passed,
                    "result": "passed" if passed else "failed: x",
                    "completion": f"c{i}",
                    "finish_reason": finish,
                    "mean_logprob": mean,
                    "sum_logprob": None if mean is None else 2 * mean if i % 2 else 10 * mean,
                    "completion_tokens": 4 + i,
                    "prompt_tokens": 10,
                }
            )
    return HumanEvalRun(model, temperature, "completion", Path("."), samples)


def test_rank_run_discards_samples_without_eos() -> None:
    run = run_of(
        {
            "A": [(True, -0.1, "stop"), (False, -0.9, "stop"), (False, -0.01, "length"), (False, -0.5, "stop")],
            "B": [(False, -0.2, "length"), (True, -0.3, "length"), (False, -0.4, "length"), (False, -0.6, "length")],
        }
    )
    result = rank.rank_run(run, ks=(1, 2))
    assert result.kept == 3 and result.samples == 8
    # A: kept 0 T(-0.1), 1 F(-0.9), 3 F(-0.5), discarded 2; B: nothing kept, scores 0. k drawn from all 4
    for ranking in rank.RANKINGS:  # one sample drawn: sample 0 or nothing
        assert result.rank_score[ranking][1] == pytest.approx((1 / 4 + 0) / 2)
    # {0,1} 1, {0,2} 1 (2 never submitted), {0,3} 1, {1,2} 0, {1,3} 0, {2,3} 0
    assert result.rank_score["mean logprob"][2] == pytest.approx((3 / 6 + 0) / 2)  # the right one ranked first
    assert result.rank_score["random"][2] == pytest.approx((2 / 6 + 0) / 2)  # {0,1} 1/2, {0,2} 1, {0,3} 1/2
    # sum: T -1.0 (10x), F -1.8 (2x), F -1.0 (2x): a tie at the top counts its mean, {0,1} 1, {0,2} 1, {0,3} 1/2
    assert result.rank_score["sum logprob"][2] == pytest.approx((2.5 / 6 + 0) / 2)
    # pass@k counts every sample (the oracle): A 1 of 4, B 1 of 4
    assert result.pass_at_k[1] == pytest.approx(0.25)


def test_budgeted_pass_at_k_is_zero_below_one_sample() -> None:
    assert largest_k(lambda k: 10 + 5 * k, 14, n=10) == 0
    assert largest_k(lambda k: 10 + 5 * k, 15, n=10) == 1
    assert largest_k(lambda k: 10 + 5 * k, 30, n=10) == 4
    assert largest_k(lambda k: 10 + 5 * k, 1e9, n=10) == 10  # never past the samples drawn
    run = run_of({"A": [(True, -0.1, "stop")] + [(False, -0.1, "stop")] * 3, "B": [(False, -0.1, "stop")] * 4})
    cost = budget.costs_of(run, parameters=1_000_000, rates=budget.Rates(100.0, 50.0, 4))
    # P = 10 prompt tokens, G = mean(4, 5, 6, 7) = 5.5 generated: flops(1) = 2e6 * 15.5
    assert (cost.prompt_tokens, cost.generated_tokens) == (10, 5.5)
    assert cost.flops(1) == 2e6 * 15.5 and cost.flops(0) == 0
    assert cost.seconds(2) == pytest.approx(10 / 100 + 2 * 5.5 / 50)

    def pass_at_budget(spend: float) -> tuple[int, float]:  # as budget.curves scores a budget
        k = largest_k(cost.flops, spend, 4)
        return k, sum(budget.per_problem(run, k)) / 2

    assert pass_at_budget(2e6 * 15.5 - 1) == (0, 0.0)
    assert pass_at_budget(2e6 * 15.5) == (1, pytest.approx((1 / 4 + 0) / 2))
    # pass@2 for A: 1 - C(3,2)/C(4,2) = 1/2; B 0
    assert pass_at_budget(2e6 * 21) == (2, pytest.approx(0.25))


def test_budget_curves_in_units_of_the_cheapest_sample() -> None:
    small = run_of({"A": [(True, -0.1, "stop"), (False, -0.1, "stop")] * 2}, model="small")
    large = run_of({"A": [(True, -0.1, "stop")] * 4}, model="large")
    costs = [budget.costs_of(small, 1_000, None), budget.costs_of(large, 4_000, None)]
    small_curve, large_curve = budget.curves([small, large], costs, "flops", k_limit="all")
    assert small_curve.units[0] == 1.0 and small_curve.budgets[0] == costs[0].flops(1)
    assert small_curve.k[0] == 1 and large_curve.k[0] == 0 and large_curve.score[0] == 0.0
    i = large_curve.k.index(1)  # the large model's first sample costs 4x the small one's
    assert large_curve.units[i] >= 4 and small_curve.k[i] == 4 and small_curve.capped[-1]
    rows = budget.winners([small_curve, large_curve], [small, large])
    assert rows[0]["winner"] == [small.label] and rows[i]["winner"] == [small.label, large.label]
    # one problem: the small model's k = 1 (pass@1 1/2) leads the large one's k = 0 by exactly that
    assert rows[0]["lead"] == {"over": large.label, "difference": 0.5, "low": 0.5, "high": 0.5, "p": 0.0, "significant": True}
    assert rows[i]["lead"] is None  # a tie: no single leader
    # the paper's setting: k up to half the 4 samples drawn, capped there however large the budget
    half, _ = budget.curves([small, large], costs, "flops")
    assert max(half.k) == 2 and half.capped[-1] and half.k[: i + 1] == [min(k, 2) for k in small_curve.k[: i + 1]]
    assert budget.k_max(1, "half") == 1 and budget.k_max(10, "half") == 5 and budget.k_max(10, "all") == 10
    with pytest.raises(ValueError, match="k_limit"):
        budget.k_max(4, "most")
    other = run_of({"B": [(True, -0.1, "stop")] * 4}, model="other")
    with pytest.raises(ValueError, match="cover different problems"):
        budget.curves([small, other], [costs[0], budget.costs_of(other, 1_000, None)], "flops")


def test_bootstrap_interval_over_problems() -> None:
    from eval.passk import benchmark_pass_at_k, benchmark_pass_at_k_interval
    from eval.stats import bootstrap_interval

    assert bootstrap_interval([0.3] * 20) == (pytest.approx(0.3), pytest.approx(0.3))  # no spread, no width
    half = [0.0, 1.0] * 50
    low, high = bootstrap_interval(half)
    assert low < 0.5 < high and high - low == pytest.approx(2 * 1.96 * 0.05, abs=0.03)  # the normal approximation's width
    assert bootstrap_interval(half) == (low, high)  # seeded: the same data, the same interval
    few_low, few_high = bootstrap_interval([0.0, 1.0] * 5)
    assert few_high - few_low > 2 * (high - low)  # fewer problems, wider
    counts = {f"t{i}": (10, i % 4) for i in range(40)}
    point, interval = benchmark_pass_at_k(counts, [1, 5]), benchmark_pass_at_k_interval(counts, [1, 5, 20])
    assert set(interval) == {1, 5} and all(interval[k][0] <= point[k] <= interval[k][1] for k in (1, 5))
    with pytest.raises(ValueError, match="no items"):
        bootstrap_interval([])


def test_budget_compares_runs_of_one_mode_only(tmp_path: Path) -> None:
    from dataclasses import replace

    completion = run_of({"HumanEval/0": [(True, -0.1, "stop")] * 4}, model="small")
    instruct = replace(run_of({"HumanEval/0": [(False, -0.1, "stop")] * 4}, model="chat"), mode="instruct")
    result = budget.budget([completion, instruct], tmp_path, None, {"small": 1_000, "chat": 2_000}, log=lambda _l: None)
    assert {key: [c["run"] for c in curves] for key, curves in result["curves"].items()} == {
        "flops@t0.8": [completion.label],
        "flops@instruct-t0.8": [instruct.label],
    }
    # on request, together at one temperature: each at its own prompt's cost (P from its own samples)
    both = budget.budget([completion, instruct], tmp_path, None, {"small": 1_000, "chat": 2_000}, log=lambda _l: None, across_modes=True)
    assert {key: [c["run"] for c in curves] for key, curves in both["curves"].items()} == {
        "flops@modes-t0.8": [completion.label, instruct.label]
    }
    assert both["winners"]["flops@modes-t0.8"][0]["winner"] == [completion.label]  # it passes, the chat run does not
    assert "--across-modes, not the paper's setting" in (tmp_path / "budget.md").read_text()


def test_polycoders_token_count_is_every_token_the_lexer_yields() -> None:
    # x, " ", =, " ", 1, "  ", the comment, the newline: whitespace tokens count, as in PolyCoder's code
    assert perplexity.lexer_token_count("x = 1  # hi\n", "python", "polycoder") == 8
    # int, " ", main, (, void, ), " ", {, " ", return, " ", 0, ;, " ", }, the newline
    assert perplexity.lexer_token_count("int main(void) { return 0; }\n", "c", "polycoder") == 16
    # the lexer's default options: leading and trailing newlines stripped, one final newline ensured
    assert (
        perplexity.lexer_token_count("\n\nx\n\n\n", "python", "polycoder") == perplexity.lexer_token_count("x", "python", "polycoder") == 2
    )


def test_bootstrap_ratio_interval_of_a_pooled_rate() -> None:
    from eval.stats import bootstrap_ratio_interval

    # two files: the resamples are (a, a), (a, b), (b, a), (b, b): ratios -1, -2, -2, -3 (Σ num / Σ den)
    assert bootstrap_ratio_interval([-1.0, -3.0], [1.0, 1.0]) == (-3.0, -1.0)
    # pooled, not averaged: a long file weighs by its tokens (-1 and -30/10: Σ -31 / 11 when both are drawn)
    low, high = bootstrap_ratio_interval([-1.0, -30.0], [1.0, 10.0], level=0.5)
    assert -3.0 <= low <= -31 / 11 <= high <= -1.0
    with pytest.raises(ValueError, match="as many denominators"):
        bootstrap_ratio_interval([1.0], [1.0, 2.0])


def test_perplexity_is_normalised_by_pygments_tokens() -> None:
    assert perplexity.lexer_token_count("x = 1  # hi\n", "python") == 4  # x, =, 1, the comment
    assert perplexity.lexer_token_count("int main(void) { return 0; }\n", "c") == 10
    files = [perplexity.FileScore("a", 100, 10, 20, 0, -10.0, 1), perplexity.FileScore("b", 300, 20, 40, 1, -20.0, 2)]
    pooled = perplexity.pool("m", "python", files)
    assert pooled.perplexity == pytest.approx(math.e)  # exp(30 / 30 lexer tokens), not per file then averaged
    assert pooled.model_token_perplexity == pytest.approx(math.exp(30 / 60))
    assert pooled.bits_per_char == pytest.approx(30 / math.log(2) / 400)
    assert (pooled.files, pooled.lexer_tokens, pooled.model_tokens) == (2, 30, 60)
    with pytest.raises(ValueError, match="no lexer"):
        perplexity.lexer_token_count("x", "no-such-language")


def solution(seconds: float | None, canonical: bool = False, error: str | None = None) -> perf.Solution:
    s = perf.Solution("T", "code", canonical)
    s.medians = [] if seconds is None else [seconds * 1.1, seconds]
    s.error = error
    return s


def test_run_times_are_normalised_within_the_problem_by_the_canonical_solution() -> None:
    group = [solution(1.0, canonical=True), solution(2.0), solution(4.0), solution(3.0, error="failed while being timed")]
    norms = perf.normalise(group)
    assert norms == {0: {"ratio": 1.0}, 1: {"ratio": 2.0}, 2: {"ratio": 4.0}}  # the one that could not be timed is left out
    assert group[1].seconds == 2.0  # the least of the repetitions' medians (2.2, 2.0)
    assert group[1].cv == pytest.approx(math.sqrt(0.02) / 2.1)  # their sample stdev over their mean
    # a fixed reference: another solution added to the problem moves nobody else's ratio
    assert perf.normalise([*group, solution(100.0)])[1] == norms[1]
    assert perf.normalise([solution(None, canonical=True, error="timed out"), solution(2.0)])[1]["ratio"] is None


def test_runs_are_compared_by_geometric_mean_across_problems() -> None:
    run = run_of({"T": [(True, -0.1, "stop"), (True, -0.1, "stop")], "U": [(False, -0.1, "stop")] * 2})
    fast, slow = solution(2.0), solution(8.0)
    for s, i in ((fast, 0), (slow, 1)):
        s.samples = [{"run": run.label, "model": "m", "temperature": 0.8, "mode": "completion", "sample": i}]
    rows = perf.summarise([run], {"T": [solution(1.0, canonical=True), fast, slow]})
    assert rows[0]["ratio_geomean"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert rows[0]["success_rate"] == 0.5 and rows[0]["timed_samples"] == 2 and rows[0]["problems"] == 1


def test_runs_are_averaged_over_problems_and_paired_with_the_lowest_temperature() -> None:
    cool = run_of({"T": [(True, -0.1, "stop")], "U": [(True, -0.1, "stop")]}, temperature=0.2)
    warm = run_of({"T": [(True, -0.1, "stop")] * 2, "U": [(True, -0.1, "stop")]}, temperature=0.8)

    def timed(seconds: float, run: HumanEvalRun, sample: int) -> perf.Solution:
        s = solution(seconds)
        s.samples = [{"run": run.label, "model": "m", "temperature": run.temperature, "mode": "completion", "sample": sample}]
        return s

    solutions = {
        "T": [solution(1.0, canonical=True), timed(2.0, cool, 0), timed(4.0, warm, 0), timed(16.0, warm, 1)],
        "U": [solution(1.0, canonical=True), timed(1.0, cool, 0), timed(4.0, warm, 0)],
    }
    rows = {r["run"]: r for r in perf.summarise([cool, warm], solutions)}
    # per problem first (T: the warm run's 4 and 16 make 8), then across problems: sqrt(2 * 1) and sqrt(8 * 4)
    assert rows[cool.label]["ratio_geomean"] == pytest.approx(math.sqrt(2))
    assert rows[warm.label]["ratio_geomean"] == pytest.approx(math.sqrt(32))
    assert rows[cool.label]["against"] is None  # the lowest temperature is the baseline
    against = rows[warm.label]["against"]
    # 4x slower on both problems: the paired ratio is 4 on every resample
    assert against["baseline"] == cool.label and against["problems"] == 2
    assert (against["ratio"], against["low"], against["high"]) == (pytest.approx(4.0), pytest.approx(4.0), pytest.approx(4.0))
    assert against["significant"] and against["p"] == 0.0
    low, high = rows[warm.label]["ratio_interval"]
    assert low == pytest.approx(4.0) and high == pytest.approx(8.0)  # resampling T (8) and U (4): 4 .. sqrt(32) .. 8
