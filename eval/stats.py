"""The one percentile helper of every report (eval's studies, `eval load|editor`, the speed suite) and the
bootstrap intervals over a benchmark's problems (of a mean, of a pooled rate, of a paired difference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Paired:
    """Two runs' per-problem scores on the same problems: the mean difference a - b, its percentile
    bootstrap interval (problems resampled, both runs' scores together), and the two-sided bootstrap p:
    twice the share of resampled differences on the far side of 0 (0 when none is)."""

    difference: float
    low: float
    high: float
    p: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Paired:
    first, second = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if first.size == 0 or first.size != second.size:
        raise ValueError(f"a paired comparison needs the same problems on both sides: {first.size} and {second.size} scores")
    differences = first - second
    draws = np.random.default_rng(seed).integers(0, differences.size, size=(resamples, differences.size))
    means = differences[draws].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    far = min(float(np.mean(means <= 0)), float(np.mean(means >= 0)))
    return Paired(float(differences.mean()), float(low), float(high), min(1.0, 2 * far))


__all__ = ["QUANTILES", "Paired", "bootstrap_interval", "bootstrap_ratio_interval", "paired_bootstrap", "percentiles"]
