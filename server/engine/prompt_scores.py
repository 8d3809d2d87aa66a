"""An echoed prompt's scores, reduced as each prefill chunk's logits arrive: every position's
log-probability of the token after it and its best `top_n` alternatives, so that echo holds [T] and
[T, top_n] numbers rather than [T, V] logits (a full-context prompt's logits at a 262k vocabulary are
gigabytes; perplexity at the model's whole context needs them that small)."""

from __future__ import annotations

import numpy as np

from server.engine.sampler import log_sum_exp


class PromptScores:
    def __init__(self, ids: list[int], top_n: int) -> None:
        self.ids = ids
        self.top_n = top_n
        self.logprobs: list[np.ndarray] = []  # per chunk: [rows] logprob of ids[p + 1] at position p
        self.top_ids: list[np.ndarray] = []  # per chunk: [rows, top_n], best first
        self.top_values: list[np.ndarray] = []
        self.done = 0  # positions scored
        self._joined: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, logits: np.ndarray) -> None:
        """The next chunk's logits ([positions, V], from position `done` on). The prompt's last position
        scores no prompt token (the first generated token is sampled from it, apart)."""
        self._joined = None
        rows = min(len(logits), len(self.ids) - 1 - self.done)
        if rows > 0:
            chunk = logits[:rows]
            lse = log_sum_exp(chunk)
            following = np.asarray(self.ids[self.done + 1 : self.done + 1 + rows])
            self.logprobs.append(chunk[np.arange(rows), following] - lse)
            if self.top_n > 0:
                best = np.argpartition(-chunk, self.top_n - 1, axis=1)[:, : self.top_n]
                values = np.take_along_axis(chunk, best, axis=1)
                order = np.argsort(-values, axis=1, kind="stable")
                self.top_ids.append(np.take_along_axis(best, order, axis=1))
                self.top_values.append(np.take_along_axis(values, order, axis=1) - lse[:, None])
        self.done += len(logits)

    def at(self, position: int) -> tuple[float, list[tuple[int, float]]]:
        """The logprob of the token at `position` (> 0) and the best alternatives there, best first."""
        logprobs, top_ids, top_values = self._table()
        row = position - 1
        if self.top_n == 0:
            return float(logprobs[row]), []
        return float(logprobs[row]), [(int(t), float(v)) for t, v in zip(top_ids[row], top_values[row], strict=True)]

    def _table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunks joined, once: echo reads every position after the last chunk."""
        if self._joined is None:
            ids, values = (np.concatenate(self.top_ids), np.concatenate(self.top_values)) if self.top_n > 0 else (np.empty(0), np.empty(0))
            self._joined = (np.concatenate(self.logprobs), ids, values)
        return self._joined
