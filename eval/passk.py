"""pass@k with the unbiased estimator of Chen et al. (2021), per problem and over a benchmark."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np


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
