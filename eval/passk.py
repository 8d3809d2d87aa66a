"""pass@k with the unbiased estimator of Chen et al. (2021), per problem and over a benchmark; rank-score@k
(ranking samples without tests); the largest k a budget buys (Hassid et al. 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from eval.stats import bootstrap_interval


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n, c of them
    correct, is correct: 1 - C(n-c, k) / C(n, k), in the numerically stable product form."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def benchmark_pass_at_k(counts: Mapping[str, tuple[int, int]], ks: Iterable[int]) -> dict[int, float]:
    """Mean over problems of pass@k, for each k that every problem has samples for: counts maps a
    task id to (n samples, c correct). A k above some problem's n is left out, never estimated."""
    if not counts:
        return {}
    least = min(n for n, _ in counts.values())
    return {k: float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()])) for k in sorted(set(ks)) if k <= least}


def benchmark_pass_at_k_interval(
    counts: Mapping[str, tuple[int, int]], ks: Iterable[int], level: float = 0.95
) -> dict[int, tuple[float, float]]:
    """For each k benchmark_pass_at_k reports: the bootstrap interval over problems of its mean (the
    uncertainty of which problems the benchmark holds; the per-problem estimate is unbiased)."""
    if not counts:
        return {}
    least = min(n for n, _ in counts.values())
    return {k: bootstrap_interval([pass_at_k(n, c, k) for n, c in counts.values()], level) for k in sorted(set(ks)) if k <= least}


def rank_score_at_k(passed: Sequence[bool], scores: Sequence[float], k: int) -> float:
    """Expected correctness of the best-scored of k samples drawn at random from n (Codex §3.3):
    (1/C(n,k)) Σ_{i=1}^{n-k+1} C(n-i, k-1) pass_i, with the samples sorted by score, highest first.
    Tied scores are ordered at random: in expectation every position of a tie group holds the group's
    mean correctness, so ties count that mean, not an arbitrary order. With fewer than k samples the
    best of all n is taken (k = n); no samples score 0."""
    if len(passed) != len(scores):
        raise ValueError(f"{len(passed)} verdicts but {len(scores)} scores")
    if k < 1:
        raise ValueError(f"rank-score@k needs k >= 1, got {k}")
    n = len(passed)
    if n == 0:
        return 0.0
    k = min(k, n)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked_scores = np.asarray(scores, dtype=np.float64)[order]
    ranked = np.asarray(passed, dtype=np.float64)[order]
    expected = ranked.copy()
    start = 0
    while start < n:  # replace each run of equal scores by its mean correctness
        end = start + 1
        while end < n and ranked_scores[end] == ranked_scores[start]:
            end += 1
        expected[start:end] = ranked[start:end].mean()
        start = end
    weights = np.array([math.comb(n - i, k - 1) for i in range(1, n - k + 2)], dtype=np.float64)
    return float(weights @ expected[: n - k + 1] / math.comb(n, k))


def largest_k(cost_of_k: Callable[[int], float], budget: float, n: int) -> int:
    """max{k in 0..n : cost(k) <= budget}, cost increasing in k; 0 when one sample is already too dear
    (the budgeted pass@k of Hassid et al. is then 0)."""
    k = 0
    while k < n and cost_of_k(k + 1) <= budget:
        k += 1
    return k
