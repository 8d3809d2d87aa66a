"""Draft tokens without a second model, for a step that verifies several tokens at once.

Code completion copies its own context: an identifier, a line edited above, a block mirrored below.
Three sources, each a lookup of the row's last few tokens:

- prompt lookup (as llama.cpp's ngram drafters and vLLM's ngram proposer do it): where those tokens
  occurred before in the prompt or in what the row generated, the tokens that followed there; the
  longest such suffix wins, and its latest occurrence;
- the editor's history: the same lookup in completions recently served under the same salt (a user
  typing through a suggestion continues it; server/engine/speculator.py keeps them);
- a prediction (OpenAI's Predicted Outputs: the code being rewritten): followed from where the row's
  tokens last agreed with it, found again by lookup after the row strays.

`DraftPace` adapts each row's draft length to what it has had accepted, and pauses a row whose drafts
keep failing, so that speculation costs little where nothing repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

MAX_NGRAM = 4  # the longest suffix looked up: longer ones are rarer and add little over 4 (vLLM's default)
MIN_NGRAM = 2  # a single token repeats too often to predict what follows it
# Draft tokens a row starts with: 3 (4 new tokens a step) was the best fixed length on editor prompts
# for both bundled models (bench.speculation_probe); a row whose drafts are accepted whole grows to
# LONGEST (a prediction copied through, a block repeated).
DRAFT_TOKENS = 3
LONGEST = 7
RESYNC_BEHIND, RESYNC_WINDOW = 8, 64  # where a row that strayed from its prediction is looked for again
SEPARATOR = -1  # between the entries of a haystack made of several texts: matches no token, ends a draft


Ids = Sequence[int] | np.ndarray


def _ends(hay: np.ndarray, tail: np.ndarray, n: int) -> np.ndarray:
    """Where each occurrence in `hay` of the last n tokens of `tail` ends (the index after it)."""
    return np.flatnonzero((sliding_window_view(hay, n) == tail[-n:]).all(axis=1)) + n


def lookup(haystack: Ids, tail: Ids, k: int, min_ngram: int = MIN_NGRAM) -> tuple[list[int], int]:
    """Up to `k` tokens that followed the latest occurrence in `haystack` of the last n tokens of `tail`,
    for the largest n from MAX_NGRAM down to `min_ngram` that occurs with a token after it (a draft
    stops at a SEPARATOR); and that n. ([], 0) when none does."""
    hay = np.asarray(haystack, dtype=np.int64)
    end = np.asarray(tail, dtype=np.int64)
    if k < 1:
        return [], 0
    for n in range(min(MAX_NGRAM, end.size, hay.size - 1), min_ngram - 1, -1):
        found = _ends(hay[:-1], end, n)  # every occurrence with at least one token after it
        found = found[hay[found] != SEPARATOR]  # an entry's end: nothing follows it
        if found.size:
            start = int(found[-1])
            draft = hay[start : start + k].tolist()
            return (draft[: draft.index(SEPARATOR)] if SEPARATOR in draft else draft), n
    return [], 0


def prompt_lookup(context: Ids, k: int, min_ngram: int = MIN_NGRAM) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the context's last n tokens (its
    own last n excluded: the haystack is the context without its last token)."""
    return lookup(context, context, k, min_ngram)[0]


def follow_prediction(
    prediction: list[int], generated: list[int], anchor: tuple[int, int], k: int
) -> tuple[list[int], tuple[int, int], int]:
    """The prediction's next `k` tokens after what the row generated, the new anchor, and how many of
    the row's last tokens agree with the prediction before them. `anchor` is (g, p): the row's first g
    tokens ended where the prediction's first p did; (0, 0) starts at the prediction's first token.
    While the row's tokens go on agreeing, the prediction is followed from there; once they stray, the
    row's last tokens are looked up near where it strayed (an edit is local: from a few tokens before it
    to RESYNC_WINDOW after), the longest suffix first, the occurrence nearest to where the row would
    be had it agreed (past the anchor where one is)."""
    g, p = anchor
    expected = p + len(generated) - g  # where the prediction is if every token since the anchor agreed
    if expected <= len(prediction) and generated[g:] == prediction[p:expected]:
        return prediction[expected : expected + k], (len(generated), expected), len(generated) - g
    low, high = max(0, p - RESYNC_BEHIND), min(len(prediction) - 1, expected + RESYNC_WINDOW)
    hay = np.asarray(prediction[low:high], dtype=np.int64)
    end = np.asarray(generated[-MAX_NGRAM:], dtype=np.int64)
    for n in range(min(MAX_NGRAM, end.size, hay.size), 0, -1):
        found = low + _ends(hay, end, n)
        if found.size:
            ahead = found[found > p]  # a rewrite keeps its order: past the anchor first
            pool = ahead if ahead.size else found
            at = int(pool[np.argmin(np.abs(pool - expected))])
            return prediction[at : at + k], (len(generated), at), n
    return [], anchor, 0


@dataclass
class DraftPace:
    """One row's draft length: longer after a draft accepted whole, as long as what was accepted plus one
    after a partial one, halved after a draft rejected at its first token; after `patience` drafts in a
    row rejected whole the row stops drafting for `rest` steps (doubling each time it happens again)."""

    length: int
    longest: int
    patience: int = 3
    misses: int = 0
    rest: int = 4
    resting: int = 0

    def wanted(self) -> int:
        """The draft length for this step; 0 while the row rests."""
        if self.resting:
            self.resting -= 1
            return 0
        return self.length

    def settle(self, drafted: int, accepted: int) -> None:
        if accepted == drafted:
            self.length, self.misses = min(self.longest, self.length + 2), 0
        elif accepted:
            self.length, self.misses = max(1, min(self.longest, accepted + 1)), 0
        else:
            self.length, self.misses = max(1, self.length // 2), self.misses + 1
            if self.misses >= self.patience:
                self.resting, self.rest, self.misses = self.rest, self.rest * 2, 0


@dataclass
class RowDrafting:
    """A row's drafting state: its pace, where it last agreed with its prediction (g, p), and which
    drafter failed it last (it loses the next tie)."""

    pace: DraftPace = field(default_factory=lambda: DraftPace(DRAFT_TOKENS, LONGEST))
    anchor: tuple[int, int] = (0, 0)
    missed: str | None = None  # the drafter whose last draft was rejected at its first token


__all__ = [
    "DRAFT_TOKENS",
    "LONGEST",
    "MAX_NGRAM",
    "MIN_NGRAM",
    "SEPARATOR",
    "DraftPace",
    "RowDrafting",
    "follow_prediction",
    "lookup",
    "prompt_lookup",
]
