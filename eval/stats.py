"""The one percentile helper of every report (eval's studies, `eval load|editor`, the speed suite) and the
bootstrap interval of a mean over a benchmark's problems."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

QUANTILES = (50, 95, 99)


def percentiles(values: Sequence[float], quantiles: Sequence[int] = QUANTILES, scale: float = 1.0) -> dict[str, float]:
    """{"p50": ..., "p95": ..., "p99": ...} of `values` times `scale` (1000: seconds as ms), numpy's linear
    interpolation between the closest ranks; {} when there are none."""
    if not values:
        return {}
    found = np.percentile(np.asarray(values, dtype=np.float64), list(quantiles))
    return {f"p{q}": float(v) * scale for q, v in zip(quantiles, found, strict=True)}


def bootstrap_interval(per_item: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean over items (a benchmark's problems, each resampled
    with replacement `resamples` times, seeded: the same data give the same interval)."""
    values = np.asarray(per_item, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no items to resample")
    draws = np.random.default_rng(seed).integers(0, values.size, size=(resamples, values.size))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_ratio_interval(
    numerators: Sequence[float], denominators: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """The percentile bootstrap interval of Σ numerators / Σ denominators over items resampled together
    (a pooled rate: perplexity's Σ log p / Σ tokens over files)."""
    top, bottom = np.asarray(numerators, dtype=np.float64), np.asarray(denominators, dtype=np.float64)
    if top.size == 0 or top.size != bottom.size:
        raise ValueError(f"need as many denominators as numerators, and some: {top.size} and {bottom.size}")
    draws = np.random.default_rng(seed).integers(0, top.size, size=(resamples, top.size))
    ratios = top[draws].sum(axis=1) / bottom[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(low), float(high)


__all__ = ["QUANTILES", "bootstrap_interval", "bootstrap_ratio_interval", "percentiles"]
