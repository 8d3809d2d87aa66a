"""One request's rows between decode steps: the next token of each row from its logits (sampling,
logprobs, detokenising, stop strings), which rows are still going, and the events not yet taken.

Each row has its own seeded generator, so that a sample's text does not depend on the others in the
batch. best_of buffers every row's deltas and releases the best n (by mean logprob) at the end.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from server.engine.drafts import RowDrafting
from server.engine.events import Delta, FinishReason, TokenLogprob, Usage
from server.engine.prompt_scores import PromptScores
from server.engine.prompts import Prompt, Prompter
from server.engine.sampler import Sampler
from server.engine.sampling import SamplingParams
from server.engine.text import IncrementalDetokenizer, StopMatcher

_UNFINISHED = "\ufffd"  # a character whose bytes were split over tokens: decoded again with its last byte


@dataclass
class _Choice:
    index: int
    rng: np.random.Generator
    detok: IncrementalDetokenizer
    stops: StopMatcher
    counts: dict[int, int] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)  # the tokens decided so far
    generated: int = 0
    newline: bool = False  # a newline generated (t_max_predict_ms ends a completion only after one)
    logprob_sum: float = 0.0
    deltas: list[Delta] = field(default_factory=list)  # kept only when best_of buffers
    reported: int = 0  # of ids, those a delta has carried
    finish_reason: FinishReason | None = None


class Sequence:
    def __init__(self, prompter: Prompter, prompt: Prompt, params: SamplingParams, sampler: Sampler, cached: int = 0) -> None:
        self.sampler = sampler
        self.tokenizer, self.eos, self.prompt, self.params = prompter.tokenizer, prompter.eos, prompt, params
        self.cached = cached  # prompt tokens reused from the prefix cache
        rows = params.best_of or params.n
        if prompt.resumed and rows != 1:
            raise ValueError(f"a resumed prompt goes on with one choice, not {rows}")
        self.choices = [self._new_choice(i) for i in range(rows)]
        self.live = list(range(rows))  # choice indexes, in the order of this sequence's cache rows
        self.tokens: list[int] = []  # the next token of each live row, fed to the next decode step
        self.events: list[Delta | Usage] = []
        self.steps = 0
        self._first_at: float | None = None  # when the first token was decided (max_predict_s counts from it)
        self._buffer = rows > params.n  # best_of: rank all, return the best n, so nothing streams early
        # speculation (server/engine/speculator.py): each drafting row's state, this request's counts by drafter
        self.drafting: dict[int, RowDrafting] = {}
        self.drafted: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()

    def _new_choice(self, index: int) -> _Choice:
        rng = np.random.default_rng(None if self.params.seed is None else [self.params.seed, index])
        stops = StopMatcher(list(self.params.stop), self.params.min_indent)
        choice = _Choice(index, rng, IncrementalDetokenizer(self.tokenizer, self.prompt.ids), stops)
        if self.prompt.resumed:  # failover: the tokens generated before count as this choice's own
            earlier = self.prompt.ids[-self.prompt.resumed :]
            choice.generated = len(earlier)
            for token in earlier:
                choice.counts[token] = choice.counts.get(token, 0) + 1
            text = self.tokenizer.decode(earlier, skip_special_tokens=True).rstrip(_UNFINISHED)
            stops.resume(text, len(self.prompt.sent))
            choice.newline = "\n" in text
        return choice

    @property
    def done(self) -> bool:
        return not self.live

    def take(self) -> list[Delta | Usage]:
        events, self.events = self.events, []
        return events

    def advance(self, logits: np.ndarray) -> list[int]:
        """Decide one token for each live row from its logits ([live rows, V]); returns the positions (in
        the previous live order) of the rows still going, whose cache rows the caller keeps."""
        self.steps += 1
        last = self.steps == self.params.max_tokens  # no forward pass after the last token
        now = time.monotonic()
        self._first_at = self._first_at or now
        late = self.params.max_predict_s is not None and now - self._first_at > self.params.max_predict_s
        kept, tokens = [], []
        choices = [self.choices[i] for i in self.live]
        params = self.params
        # every row's token in one pass over [rows, V]; logprobs (and best_of's ranking) from the raw logits
        scored = params.logprobs is not None or (params.best_of or 0) > params.n
        chosen, lse = self.sampler.sample(logits, params, [c.rng for c in choices], [c.counts for c in choices], scored)
        for row, choice in enumerate(choices):
            token, delta = self._next_token(choice, int(chosen[row]), logits[row], None if lse is None else float(lse[row]))
            self._emit(choice, delta)
            if delta.finish_reason is not None:
                continue
            if last or (late and choice.newline):
                self._emit(choice, Delta(choice.index, self._drain(choice), None, "length"))
                continue
            kept.append(row)
            tokens.append(token)
        self.live = [self.live[r] for r in kept]
        self.tokens = tokens
        if not self.live:
            self._end()
        return kept

    def held(self, choice: int) -> list[int]:
        """The tokens a live row's KV cache holds after a step: the prompt and all it decided but the last."""
        return self.prompt.ids + self.choices[choice].ids[:-1]

    def close_all(self, reason: FinishReason) -> None:
        for i in self.live:
            choice = self.choices[i]
            self._emit(choice, Delta(choice.index, self._drain(choice), None, reason))
        self.live = []
        self._end()

    def echo(self, scores: PromptScores | None) -> None:
        """The prompt as the first text of each choice, with its own tokens' logprobs when asked for
        (scores: every prompt position's, reduced as prefill went; the prefix is not echoed)."""
        scored = None
        if self.params.logprobs is not None and scores is not None:
            scored = []
            for pos in range(self.prompt.prefix, len(self.prompt.ids)):
                token = self.prompt.ids[pos]
                if pos == 0:  # token i is scored by position i-1: nothing scores the first
                    scored.append(TokenLogprob(self._decode(token), None, None))
                    continue
                logprob, best = scores.at(pos)
                top: dict[str, float] | None = None
                if self.params.logprobs > 0:
                    top = {}
                    for t, value in best:  # best first: tokens that decode alike (byte pieces) keep the higher value
                        top.setdefault(self._decode(t), value)
                scored.append(TokenLogprob(self._decode(token), logprob, top))
        self.events.extend(Delta(i, self.prompt.text, scored) for i in range(self.params.n))

    # --- one row's next token ---

    def _next_token(self, choice: _Choice, token: int, logits: np.ndarray, lse: float | None) -> tuple[int, Delta]:
        # logits: [V], this row's raw logits; lse their log-normaliser when logprobs are wanted
        params = self.params
        choice.generated += 1
        choice.ids.append(token)
        choice.counts[token] = choice.counts.get(token, 0) + 1
        info = None
        if lse is not None:
            choice.logprob_sum += float(logits[token]) - lse
            if params.logprobs is not None:
                info = [self._token_logprob(token, logits, lse, params.logprobs)]
        if token in self.eos and not params.ignore_eos:
            return token, Delta(choice.index, self._drain(choice), info, "stop")
        piece = choice.detok.add(token)
        choice.newline = choice.newline or "\n" in piece
        text = choice.stops.push(piece)
        return token, Delta(choice.index, text, info, "stop" if choice.stops.stopped else None)

    @staticmethod
    def _drain(choice: _Choice) -> str:
        """What generation leaves held back at its end: an unfinished character, a possible stop's start."""
        text = choice.stops.push(choice.detok.flush())
        return text + choice.stops.flush()

    def _decode(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    def _token_logprob(self, token: int, logits: np.ndarray, lse: float, top_n: int) -> TokenLogprob:
        top: dict[str, float] | None = None
        if top_n > 0:
            best = np.argpartition(-logits, top_n - 1)[:top_n]
            best = best[np.argsort(-logits[best], kind="stable")]
            top = {}
            for t in best:  # best first: tokens that decode alike (byte pieces) keep the higher value
                top.setdefault(self._decode(int(t)), float(logits[t]) - lse)
        return TokenLogprob(self._decode(token), float(logits[token]) - lse, top)

    # --- events ---

    def _emit(self, choice: _Choice, delta: Delta) -> None:
        if delta.finish_reason:
            choice.finish_reason = delta.finish_reason
        if not (delta.text or delta.logprobs or delta.finish_reason):
            return  # its tokens go with the choice's next delta
        delta.token_ids, choice.reported = choice.ids[choice.reported :], len(choice.ids)
        (choice.deltas if self._buffer else self.events).append(delta)

    def _end(self) -> None:
        if self._buffer:
            best = sorted(self.choices, key=lambda c: -c.logprob_sum / max(c.generated, 1))[: self.params.n]
            for new_index, choice in enumerate(best):
                self.events.extend(replace(d, index=new_index) for d in choice.deltas)
        self.events.append(
            Usage(
                prompt_tokens=len(self.prompt.ids) - self.prompt.resumed,
                completion_tokens=sum(c.generated for c in self.choices),
                prompt_tokens_trimmed=self.prompt.trimmed,
                cached_tokens=self.cached,
                draft_tokens=sum(self.drafted.values()),
                accepted_draft_tokens=sum(self.accepted.values()),
                accepted_prediction_tokens=self.accepted["prediction"],
                rejected_prediction_tokens=self.drafted["prediction"] - self.accepted["prediction"],
            )
        )
