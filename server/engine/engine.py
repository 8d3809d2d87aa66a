"""The decode loop: prompt ids in, a stream of text deltas out, one per choice per step.

n samples (or best_of) share one prefill: the one-row KV cache is copied into n rows, then every live
row decodes one token per step. A finished row leaves the batch at once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from server.engine.events import Delta, FinishReason, TokenLogprob, Usage
from server.engine.prompts import InvalidInput, Prompt, Prompter
from server.engine.runner import KVCache, Runner
from server.engine.sampling import SamplingParams, adjust_logits, log_softmax, sample
from server.engine.text import IncrementalDetokenizer, StopMatcher
from server.models.store import model_dir


@dataclass
class _Choice:
    index: int
    rng: np.random.Generator
    detok: IncrementalDetokenizer
    stops: StopMatcher
    counts: dict[int, int] = field(default_factory=dict)
    generated: int = 0
    logprob_sum: float = 0.0
    deltas: list[Delta] = field(default_factory=list)  # kept only when best_of buffers
    finish_reason: str | None = None


class Engine(Prompter):
    """A model's prompt side (Prompter) and its ONNX Runtime session: prompts in, text deltas out."""

    def __init__(self, repository: Path, name: str, threads: int, device: str = "cpu") -> None:
        super().__init__(repository, name)
        self.runner = Runner(model_dir(repository, name) / self.manifest.onnx_file, threads, device=device)

    # --- generation ---

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event | None = None
    ) -> Iterator[Delta | Usage]:
        """Yield Deltas as tokens are decided, then one Usage: one request on its own (the scheduler
        batches many through start / Sequence.advance). Stops early, yielding nothing more, when
        `cancel` is set (the client went away)."""
        cancel = cancel or threading.Event()
        sequence, cache = self.start(prompt, params)
        yield from sequence.take()
        while cache is not None:
            if cancel.is_set():
                return
            logits, cache = self.runner.decode(sequence.tokens, cache)
            kept = sequence.advance(logits)
            yield from sequence.take()
            if not kept:
                break
            if len(kept) < cache.batch:
                cache = cache.select(kept)

    def start(self, prompt: Prompt, params: SamplingParams) -> tuple[Sequence, KVCache | None]:
        """Prefill the prompt and decide each row's first token: the sequence (its first events ready to
        take) and the KV cache of its rows still going, or None when none is."""
        rows = params.best_of or params.n
        scored = params.echo and params.logprobs is not None
        logits, cache = self.runner.prefill(prompt.ids, all_logits=scored)  # logits: [T or fewer, V]
        sequence = Sequence(self, prompt, params, [self._new_choice(i, prompt, params) for i in range(rows)])
        if params.echo:
            echoed = self._echo(prompt, logits, params)
            sequence.events.extend(Delta(i, prompt.text, echoed) for i in range(params.n))
        if params.max_tokens == 0:  # echo-only scoring: nothing to generate
            sequence.close_all("length")
            return sequence, None
        kept = sequence.advance(np.repeat(logits[-1:], rows, axis=0))
        if not kept:
            return sequence, None
        cache = cache.repeat(rows) if rows > 1 else cache
        return sequence, cache.select(kept) if len(kept) < rows else cache

    def _new_choice(self, index: int, prompt: Prompt, params: SamplingParams) -> _Choice:
        # each row its own generator: a sample's text does not depend on the others in the batch
        rng = np.random.default_rng(None if params.seed is None else [params.seed, index])
        return _Choice(index, rng, IncrementalDetokenizer(self.tokenizer, prompt.ids), StopMatcher(list(params.stop)))

    def _step(self, choice: _Choice, logits: np.ndarray, params: SamplingParams) -> tuple[int, Delta]:
        # logits: [V] for this row
        token = sample(adjust_logits(logits, params, choice.counts), params, choice.rng)
        choice.generated += 1
        choice.counts[token] = choice.counts.get(token, 0) + 1
        info = None
        if params.logprobs is not None or (params.best_of or 0) > params.n:
            logprobs = log_softmax(logits)
            choice.logprob_sum += float(logprobs[token])
            if params.logprobs is not None:
                info = [self._token_logprob(token, logprobs, params.logprobs)]
        if token in self._eos and not params.ignore_eos:
            return token, Delta(choice.index, self._drain(choice), info, "stop")
        text = choice.stops.push(choice.detok.add(token))
        return token, Delta(choice.index, text, info, "stop" if choice.stops.stopped else None)

    @staticmethod
    def _drain(choice: _Choice) -> str:
        """What generation leaves held back at its end: an unfinished character, a possible stop's start."""
        text = choice.stops.push(choice.detok.flush())
        return text + choice.stops.flush()

    def _token_logprob(self, token: int, logprobs: np.ndarray, top_n: int) -> TokenLogprob:
        top = None
        if top_n > 0:
            best = np.argpartition(-logprobs, top_n - 1)[:top_n]
            best = best[np.argsort(-logprobs[best])]
            top = {}
            for t in best:  # best first: tokens that decode alike (byte pieces) keep the higher value
                top.setdefault(self.tokenizer.decode([int(t)], skip_special_tokens=False), float(logprobs[t]))
        return TokenLogprob(self.tokenizer.decode([token], skip_special_tokens=False), float(logprobs[token]), top)

    def _echo(self, prompt: Prompt, logits: np.ndarray, params: SamplingParams) -> list[TokenLogprob] | None:
        """Logprobs of the prompt's own tokens (prefix excluded): token i is scored by position i-1."""
        if params.logprobs is None:
            return None
        start = prompt.prefix
        out = []
        for pos in range(start, len(prompt.ids)):
            token = prompt.ids[pos]
            if pos == 0:
                out.append(TokenLogprob(self.tokenizer.decode([token], skip_special_tokens=False), None, None))
            else:
                out.append(self._token_logprob(token, log_softmax(logits[pos - 1]), params.logprobs))
        return out


class Sequence:
    """One request's rows between decode steps: which are still going, the token each feeds next,
    and the events (Deltas, then one Usage) produced and not yet taken."""

    def __init__(self, engine: Engine, prompt: Prompt, params: SamplingParams, choices: list[_Choice]) -> None:
        self._engine, self.prompt, self.params, self.choices = engine, prompt, params, choices
        self.live = list(range(len(choices)))  # choice indexes, in the order of this sequence's cache rows
        self.tokens: list[int] = []  # the next token of each live row, fed to the next decode step
        self.events: list[Delta | Usage] = []
        self.steps = 0
        self._buffer = len(choices) > params.n  # best_of: rank all, return the best n, so nothing streams early

    @property
    def done(self) -> bool:
        return not self.live

    def take(self) -> list[Delta | Usage]:
        events, self.events = self.events, []
        return events

    def advance(self, logits: np.ndarray) -> list[int]:
        """Decide one token for each live row from its logits ([live rows, V]); returns the positions (in
        the previous live order) of the rows still going, whose cache rows the caller keeps."""
        engine, params = self._engine, self.params
        self.steps += 1
        last = self.steps == params.max_tokens  # no forward pass after the last token
        kept, tokens = [], []
        for row, i in enumerate(self.live):
            choice = self.choices[i]
            token, delta = engine._step(choice, logits[row], params)
            self._emit(choice, delta)
            if delta.finish_reason is not None:
                continue
            if last:
                self._emit(choice, Delta(choice.index, engine._drain(choice), None, "length"))
                continue
            kept.append(row)
            tokens.append(token)
        self.live = [self.live[r] for r in kept]
        self.tokens = tokens
        if not self.live:
            self._end()
        return kept

    def close_all(self, reason: str) -> None:
        for i in self.live:
            choice = self.choices[i]
            self._emit(choice, Delta(choice.index, self._engine._drain(choice), None, reason))
        self.live = []
        self._end()

    def _emit(self, choice: _Choice, delta: Delta) -> None:
        if delta.finish_reason:
            choice.finish_reason = delta.finish_reason
        if not (delta.text or delta.logprobs or delta.finish_reason):
            return
        (choice.deltas if self._buffer else self.events).append(delta)

    def _end(self) -> None:
        if self._buffer:
            best = sorted(self.choices, key=lambda c: -c.logprob_sum / max(c.generated, 1))[: self.params.n]
            for new_index, choice in enumerate(best):
                self.events.extend(Delta(new_index, d.text, d.logprobs, d.finish_reason) for d in choice.deltas)
        self.events.append(Usage(
            prompt_tokens=len(self.prompt.ids),
            completion_tokens=sum(c.generated for c in self.choices),
            prompt_tokens_trimmed=self.prompt.trimmed,
        ))


__all__ = ["Delta", "Engine", "InvalidInput", "KVCache", "Prompt", "Prompter", "SamplingParams", "Sequence", "TokenLogprob", "Usage"]
