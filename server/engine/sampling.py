"""Logits -> next token. One row at a time, each with its own seeded generator, so a sample's tokens do
not depend on what else is in the batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Below this temperature sampling is argmax: dividing by ~0 overflows and means greedy anyway.
_TEMPERATURE_FLOOR = 1e-5
# top_p looks for the nucleus among the tokens at least this likely relative to the most likely one,
# widening the cut until they hold top_p of the mass: one pass over the vocabulary (262k for Gemma)
# per cut, and a sort of a few candidates, instead of sorting the vocabulary (11 ms a row, the bulk
# of a sampled decode step at n = 10).
_NUCLEUS_CUTS = (1e-2, 1e-4, 1e-6, 1e-9)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    n: int = 1
    best_of: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # top-N alternatives per token; None: no logprobs
    echo: bool = False
    ignore_eos: bool = False  # generate max_tokens whatever the model says (fixed-length latency runs)
    min_indent: int = 0  # llama.cpp's n_indent: a later line indented less than this ends the completion before it
    max_predict_s: float | None = None  # llama.cpp's t_max_predict_ms: past it from the first token, end at a newline
    speculative: bool = False  # verify prompt-lookup drafts several tokens a step (a request decoding alone)

    @property
    def greedy(self) -> bool:
        return self.temperature < _TEMPERATURE_FLOOR


def log_softmax(logits: np.ndarray) -> np.ndarray:
    # logits: [..., V]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def adjust_logits(logits: np.ndarray, params: SamplingParams, counts: dict[int, int]) -> np.ndarray:
    """logit_bias, then OpenAI's presence and frequency penalties over the tokens generated so far."""
    if not (params.logit_bias or (counts and (params.presence_penalty or params.frequency_penalty))):
        return logits
    logits = logits.copy()
    for token, bias in params.logit_bias.items():
        logits[token] += bias
    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = np.fromiter(counts.keys(), dtype=np.int64)
        freq = np.fromiter(counts.values(), dtype=np.float32)
        logits[ids] -= params.frequency_penalty * freq + params.presence_penalty
    return logits


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    # logits: [V] float32
    if params.greedy:
        return int(logits.argmax())
    scaled = logits / np.float32(params.temperature)
    weights = np.exp(scaled - scaled.max())  # [V], the most likely token at 1
    candidates = None
    if 0 < params.top_k < weights.shape[0]:
        candidates = np.argpartition(-weights, params.top_k - 1)[: params.top_k]
    if params.top_p < 1.0:
        candidates = _nucleus(weights, candidates, params.top_p)
    if candidates is not None:
        return int(candidates[_draw(weights[candidates].astype(np.float64), rng)])
    return _draw(weights.astype(np.float64), rng)


def _nucleus(weights: np.ndarray, candidates: np.ndarray | None, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens (among `candidates`, top_k's, if given) holding top_p of
    their mass, most likely first. Every token outside a cut is less likely than every token inside
    it, so once a cut holds top_p of the mass the nucleus lies inside it: the result is exact."""
    pool = weights if candidates is None else weights[candidates]
    total = float(pool.sum(dtype=np.float64))
    for cut in _NUCLEUS_CUTS:
        inside = np.flatnonzero(pool >= cut)
        if float(pool[inside].sum(dtype=np.float64)) >= top_p * total:
            break
    else:  # a distribution this flat: the whole pool
        inside = np.arange(pool.shape[0])
    mass = pool[inside].astype(np.float64) / total
    order = np.argsort(-mass, kind="stable")
    keep = int(np.searchsorted(np.cumsum(mass[order]), top_p)) + 1  # smallest set whose mass reaches top_p
    chosen = inside[order[:keep]]
    return chosen if candidates is None else candidates[chosen]


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    # inverse CDF: one uniform number per token, so the stream of draws is reproducible per seed
    cumulative = np.cumsum(probs)
    return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), probs.shape[0] - 1)
