"""Draft tokens without a second model, for a step that verifies several tokens at once.

Code completion copies its own context: an identifier, a line edited above, a block mirrored below.
Prompt lookup (as llama.cpp's ngram drafters and vLLM's ngram proposer do it) takes the row's last few
tokens, finds where they occurred before in the prompt or in what the row generated, and proposes the
tokens that followed there; the longest such suffix wins, and its latest occurrence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAX_NGRAM = 4  # the longest suffix looked up: longer ones are rarer and add little over 4 (vLLM's default)
MIN_NGRAM = 2  # a single token repeats too often to predict what follows it


def prompt_lookup(context: Sequence[int] | np.ndarray, k: int, max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the context's last n tokens, for
    the largest n from `max_ngram` down to `min_ngram` that occurs earlier; [] when none does."""
    ids = np.asarray(context, dtype=np.int64)
    if k < 1:
        return []
    for n in range(min(max_ngram, ids.size - 1), min_ngram - 1, -1):
        # every window that ends before the last token, so that at least one token follows it
        windows = sliding_window_view(ids[:-1], n)
        found = np.flatnonzero((windows == ids[-n:]).all(axis=1))
        if found.size:
            start = int(found[-1]) + n
            return ids[start : start + k].tolist()
    return []


__all__ = ["MAX_NGRAM", "MIN_NGRAM", "prompt_lookup"]
