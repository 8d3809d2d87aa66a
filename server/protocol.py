"""Wire models of the OpenAI completion and chat APIs (shared/reference/api-contract.md), and their
conversion into the neutral request serving takes (server/generation.py).

Fields follow the OpenAI legacy Completions reference in its order, then a marked block of our
extensions. Unknown fields (the Copilot plugin's `nwo`, `extra`, ...) are accepted and ignored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from server.backends.base import ModelStatus
from server.engine import ContextFile, FinishReason, SamplingParams
from server.generation import Conversation, GenerationRequest, Texts, with_defaults
from server.settings import Settings


class FieldError(ValueError):
    """A cross-field rule broken: names the request parameter to blame."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _bias_in_range(bias: dict[int, float] | None) -> dict[int, float] | None:
    for token, value in (bias or {}).items():
        if not -100 <= value <= 100:
            raise ValueError(f"bias for token {token} is {value}; it must be between -100 and 100")
    return bias


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class PredictionPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Prediction(BaseModel):
    """OpenAI's Predicted Outputs: text the output is expected to repeat (the code being edited)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["content"]
    content: str | list[PredictionPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class _SamplingRequest(BaseModel):
    """The fields the completion and chat requests share, with the same meaning and bounds."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # the Copilot plugin sends none: the server's first model answers
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[int, float] | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=0)  # the engine's generators (numpy's SeedSequence) take no negative seed
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    prediction: Prediction | None = Field(
        None,
        description="OpenAI's Predicted Outputs ({type: content, content}): drafts verified several tokens a step "
        "while the output repeats it; usage.completion_tokens_details counts its accepted and rejected tokens.",
    )

    # --- slipstream extensions ---
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens; 0 turns it off (llama.cpp, vLLM).")
    min_p: float = Field(
        0.0, ge=0.0, le=1.0, description="Cut tokens less likely than min_p times the most likely one (llama.cpp, vLLM); 0: off."
    )
    ignore_eos: bool = Field(False, description="Go on past EOS up to max_tokens (as llama.cpp and vLLM allow).")
    cache_prompt: StrictBool = Field(
        True,
        description="Reuse the prefix cache for this prompt and keep its keys and values there (llama.cpp's "
        "field); false: prefilled from scratch and not kept.",
    )
    speculative: StrictBool | None = Field(
        None,
        description="Verify prompt-lookup drafts several tokens a step when the request decodes alone (fewer "
        "steps; the same text up to near ties); none: the server's `speculative` setting.",
    )

    _check_logit_bias = field_validator("logit_bias")(_bias_in_range)

    def _asked(self) -> SamplingParams:
        """The sampling fields both requests share (max_tokens and temperature are with_defaults')."""
        return SamplingParams(
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            n=self.n,
            stop=_stops(self.stop),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias=dict(self.logit_bias or {}),
            ignore_eos=self.ignore_eos,
        )

    def _generation(
        self, settings: Settings, prompt: Texts | Conversation, params: SamplingParams, max_tokens: int | None
    ) -> GenerationRequest:
        return GenerationRequest(
            model=self.model,
            prompt=prompt,
            params=with_defaults(settings, params, max_tokens=max_tokens, temperature=self.temperature, speculative=self.speculative),
            stream=self.stream,
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            cache_prompt=self.cache_prompt,
            prediction=self.prediction.text() if self.prediction is not None else None,
        )


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


class InputExtra(BaseModel):
    """Another file's code for the completion to draw on: llama.cpp's `input_extra` chunk."""

    model_config = ConfigDict(extra="ignore")
    filename: str = Field("tmp", max_length=1024)
    text: str


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(None, ge=1)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(None, ge=0)
    suffix: str | None = None

    # --- slipstream extension (llama.cpp's /infill field): other files of the project, laid out before
    # the prompt with the model's repository tokens where it has them, trimmed first when it is long ---
    input_extra: list[InputExtra] | None = None
    n_indent: int = Field(
        0,
        ge=0,
        description="llama.cpp's: a line after the first indented less than this many spaces ends the completion before it (0: off).",
    )
    t_max_predict_ms: int | None = Field(
        None,
        ge=0,
        description="llama.cpp's: past this many ms since the first token, the completion ends at its next newline (0 or none: off).",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, prompt: str | list) -> str | list:
        if isinstance(prompt, list) and (not prompt or any(isinstance(p, list) and not p for p in prompt)):
            raise ValueError("prompt must not be empty")
        return prompt

    @model_validator(mode="after")
    def _best_of_at_least_n(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of < self.n:
            raise FieldError(f"best_of ({self.best_of}) must be at least n ({self.n})", "best_of")
        return self

    @model_validator(mode="after")
    def _best_of_not_streamed(self) -> CompletionRequest:
        if self.stream and self.best_of is not None and self.best_of > self.n:
            raise FieldError("best_of > n cannot be streamed: the best samples are known only at the end", "best_of")
        return self

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompt as a list of prompts, each text or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):  # one prompt of token ids
            return [cast(list[int], self.prompt)]
        # the validator admits only lists of one kind: several texts, or several lists of ids
        return cast(list[str] | list[list[int]], self.prompt)

    def generation(self, settings: Settings) -> GenerationRequest:
        """As the neutral request serving takes: each prompt, the suffix and other files, OpenAI's sampling
        fields and llama.cpp's n_indent and t_max_predict_ms (our documented extensions)."""
        extra = tuple(ContextFile(e.filename, e.text) for e in self.input_extra or [])
        params = replace(
            self._asked(),
            best_of=self.best_of,
            logprobs=self.logprobs,
            echo=self.echo,
            min_indent=self.n_indent,
            max_predict_s=self.t_max_predict_ms / 1000 if self.t_max_predict_ms else None,
        )
        return self._generation(settings, Texts(self.prompts(), self.suffix, extra), params, self.max_tokens)


class Logprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: FinishReason | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens reused from the prefix cache instead of prefilled")


class CompletionTokensDetails(BaseModel):
    accepted_prediction_tokens: int = Field(0, description="Tokens of the prediction that the output confirmed")
    rejected_prediction_tokens: int = Field(0, description="Tokens of the prediction verified and not confirmed")
    # --- slipstream extension: speculative decoding, every drafter's (the prediction's included) ---
    draft_tokens: int = Field(0, description="Draft tokens verified")
    accepted_draft_tokens: int = Field(0, description="Of them, confirmed: tokens decided without a decode step of their own")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)
    # --- slipstream extension: how many prompt tokens were cut from the left to fit the context ---
    prompt_tokens_trimmed: int = 0


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "slipstream"
    # --- slipstream extensions: what eval needs to know about the model ---
    architecture: str
    parameters: int
    precision: str
    context_length: int
    chat: bool = Field(description="Whether /v1/chat/completions serves this model (it has a chat template)")
    fim: bool = Field(False, description="Whether the model fills in the middle: a completion's suffix goes into its prompt")
    ready: bool = Field(description="Whether requests are served now (in memory, or loaded by the first request)")
    status: ModelStatus = Field(description="ready: in memory; standby: exported, loaded by its first request (load = lazy)")
    prefix_cache_mb: int = Field(0, description="The model's prefix-cache budget (prefix_cache_mb; 0: off)")
    reuse_grid: int | None = Field(
        None,
        description="Cached prompt prefixes are reused in multiples of this many positions (measured at load so that "
        "a reused prefix gives a cold prefill's bits; 1: to the token); none where unknown (Triton, not loaded)",
    )

    max_batch_rows: int | None = Field(
        None, description="Rows (samples) the server decodes together at most: a client fills them with requests in flight"
    )
    max_n: int | None = Field(None, description="The largest n (and best_of) one request may ask for")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- chat completions (OpenAI /v1/chat/completions) ---


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=5)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)  # the older name of max_completion_tokens

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise FieldError("top_logprobs requires logprobs: true", "top_logprobs")
        return self

    def generation(self, settings: Settings) -> GenerationRequest:
        messages = [{"role": m.role, "content": m.text()} for m in self.messages]
        params = replace(self._asked(), logprobs=(self.top_logprobs or 0) if self.logprobs else None)
        return self._generation(settings, Conversation(messages), params, self.max_completion_tokens or self.max_tokens)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobEntry]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


def chat_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"
