"""The one percentile helper of every report (eval's studies, `eval load|editor`, the speed suite)."""

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


__all__ = ["QUANTILES", "percentiles"]
