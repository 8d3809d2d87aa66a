"""Which draft a row verifies in its next step, and what the drafting did.

A row decoding alone drafts from its request's prediction first (OpenAI's Predicted Outputs), else, if
it asked for speculation, by lookup of its last tokens in its own prompt and output or in completions
served recently under the same salt, the longer match winning (the history on a tie) (server/engine/drafts.py). The history
is kept per salt (API key) and read only under it: a request never drafts from another key's code.
Each row's draft length follows its acceptance (`DraftPace`); the counters per drafter feed /metrics,
each request's the usage it reports.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from server.engine.drafts import SEPARATOR, RowDrafting, follow_prediction, lookup
from server.engine.sequence import Sequence

HISTORY_ENTRIES = 8  # completions kept per salt, the latest first to go when more come
HISTORY_TOKENS = 1024  # of each: the end of its prompt (where the user typed on) and its text
PROMPT_TAIL = 16  # tokens of the prompt kept before a completion: a match may span the two
HISTORY_SALTS = 256  # salts with a history; the one least recently served goes first

DRAFTERS = ("prediction", "prompt_lookup", "history")


@dataclass(frozen=True)
class Draft:
    tokens: list[int]
    drafter: str  # one of DRAFTERS
    choice: int  # the row's choice index


class Speculator:
    def __init__(self) -> None:
        # every drafter's key there from the start: another thread (/metrics, Triton's reporter) copies them
        self.drafted: Counter[str] = Counter(dict.fromkeys(DRAFTERS, 0))  # draft tokens verified, by drafter
        self.accepted: Counter[str] = Counter(dict.fromkeys(DRAFTERS, 0))  # of them, confirmed by the rows' own decisions
        self._history: OrderedDict[str, deque[list[int]]] = OrderedDict()
        self._haystacks: dict[str, np.ndarray] = {}  # each salt's history joined, SEPARATOR between

    def counts(self) -> tuple[dict[str, int], dict[str, int]]:
        """Draft tokens verified and confirmed so far, by drafter."""
        return dict(self.drafted), dict(self.accepted)

    def draft(self, sequence: Sequence) -> Draft | None:
        """The draft for the sequence's one live row, or None (nothing asked, nothing found, resting)."""
        prediction, params = sequence.prompt.prediction, sequence.params
        if not (prediction or params.speculative):
            return None
        index = sequence.live[0]
        row = sequence.drafting.setdefault(index, RowDrafting())
        k = min(row.pace.wanted(), params.max_tokens - sequence.steps - 1)  # never past max_tokens
        if k < 1:
            return None
        generated = sequence.choices[index].ids
        # (tokens matched, not the drafter that failed last, priority): the longest match wins; on a tie the
        # prediction, then the history (what the model said last time after the same tokens, under this
        # key), then the prompt, a drafter whose last draft was rejected outright after the others
        found: list[tuple[int, bool, int, Draft]] = []
        if prediction:
            tokens, row.anchor, agreed = follow_prediction(prediction, generated, row.anchor, k)
            found.append((agreed, row.missed != "prediction", 2, Draft(tokens, "prediction", index)))
        if params.speculative:
            context = np.asarray([*sequence.prompt.ids, *generated], dtype=np.int64)
            own, n = lookup(context, context, k)
            found.append((n, row.missed != "prompt_lookup", 0, Draft(own, "prompt_lookup", index)))
            haystack = self._haystacks.get(sequence.prompt.cache_salt)
            if haystack is not None:
                earlier, m = lookup(haystack, context, k)
                found.append((m, row.missed != "history", 1, Draft(earlier, "history", index)))
        found = [f for f in found if f[3].tokens]
        return max(found, key=lambda f: f[:3])[3] if found else None

    def settle(self, sequence: Sequence, draft: Draft, accepted: int) -> None:
        """The row confirmed the draft's first `accepted` tokens."""
        row = sequence.drafting[draft.choice]
        row.pace.settle(len(draft.tokens), accepted)
        row.missed = None if accepted else draft.drafter
        for counters, value in ((self.drafted, len(draft.tokens)), (self.accepted, accepted)):
            counters[draft.drafter] += value
        sequence.drafted[draft.drafter] += len(draft.tokens)
        sequence.accepted[draft.drafter] += accepted

    def remember(self, sequence: Sequence) -> None:
        """A finished speculative request's completions, for the next requests under its salt."""
        if not sequence.params.speculative:
            return
        salt = sequence.prompt.cache_salt
        entries = self._history.pop(salt, None) or deque(maxlen=HISTORY_ENTRIES)
        tail = sequence.prompt.ids[-PROMPT_TAIL:]
        for choice in sequence.choices:
            if choice.ids:
                entries.append([*tail, *choice.ids][-HISTORY_TOKENS:])
        self._history[salt] = entries
        while len(self._history) > HISTORY_SALTS:
            self._haystacks.pop(self._history.popitem(last=False)[0], None)
        joined: list[int] = []
        for entry in entries:
            joined.extend([*entry, SEPARATOR])
        self._haystacks[salt] = np.asarray(joined, dtype=np.int64)


__all__ = ["DRAFTERS", "Draft", "Speculator"]
