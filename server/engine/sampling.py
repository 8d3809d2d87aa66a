"""What a request asks of sampling (SamplingParams) and log_softmax; the sampler that applies them to a
decode step's rows is server/engine/sampler.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Below this temperature sampling is argmax: dividing by ~0 overflows and means greedy anyway.
_TEMPERATURE_FLOOR = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # tokens less likely than min_p times the most likely one are cut (0: off)
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
