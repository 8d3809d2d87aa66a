"""Logits -> next token. One row at a time, each with its own seeded generator, so a sample's tokens do
not depend on what else is in the batch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Below this temperature sampling is argmax: dividing by ~0 overflows and means greedy anyway.
_TEMPERATURE_FLOOR = 1e-5
# top_p first looks among this many most likely tokens, which nearly always hold the nucleus; it
# sorts the whole vocabulary (262k for Gemma) only when they do not.
_NUCLEUS_CANDIDATES = 2048


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
    scaled = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scaled.shape[0]:
        candidates = np.argpartition(-scaled, params.top_k - 1)[: params.top_k]
    else:
        candidates = None
    if params.top_p < 1.0:
        candidates = _nucleus(scaled, candidates, params.top_p)
    if candidates is not None:
        probs = _softmax(scaled[candidates])
        return int(candidates[_draw(probs, rng)])
    return _draw(_softmax(scaled), rng)


def _nucleus(scaled: np.ndarray, candidates: np.ndarray | None, top_p: float) -> np.ndarray:
    probs = _softmax(scaled)
    if candidates is None and scaled.shape[0] > _NUCLEUS_CANDIDATES:
        head = np.argpartition(-probs, _NUCLEUS_CANDIDATES - 1)[:_NUCLEUS_CANDIDATES]
        if probs[head].sum() >= top_p:
            candidates = head
    if candidates is None:
        candidates = np.arange(scaled.shape[0])
    # renormalise within the candidates (top_k first, as llama.cpp and vLLM apply it)
    cand_probs = probs[candidates] / probs[candidates].sum()
    order = np.argsort(-cand_probs, kind="stable")
    cumulative = np.cumsum(cand_probs[order])
    keep = int(np.searchsorted(cumulative, top_p)) + 1  # smallest set whose mass reaches top_p
    return candidates[order[:keep]]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    # inverse CDF: one uniform number per token, so the stream of draws is reproducible per seed
    cumulative = np.cumsum(probs)
    return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), probs.shape[0] - 1)
