"""What the engine produces for a request: text deltas per choice, then one Usage. The same types cross
Triton's wire (server/triton/wire.py) and reach serving, whichever backend ran the model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Why a choice ended: an EOS token or a stop string ("stop"), or max_tokens ("length").
FinishReason = Literal["stop", "length"]


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None  # None for a first prompt token that nothing precedes
    top: dict[str, float] | None


@dataclass
class Delta:
    """New text for one choice; the last delta of a choice carries its finish_reason."""

    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    token_ids: list[int] = field(default_factory=list)  # the choice's tokens decided since its previous delta (failover resumes from them)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    prompt_tokens_trimmed: int = 0  # left-trimmed to fit the context window
    cached_tokens: int = 0  # of prompt_tokens, reused from the prefix cache instead of prefilled
    draft_tokens: int = 0  # speculation: draft tokens verified, every drafter's
    accepted_draft_tokens: int = 0  # of them, confirmed (tokens decided without a step of their own)
    accepted_prediction_tokens: int = 0  # of the request's prediction, confirmed (OpenAI's Predicted Outputs)
    rejected_prediction_tokens: int = 0  # of the request's prediction, verified and not confirmed
