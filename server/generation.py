"""The neutral request every API speaks into: what to generate from, how to sample it, how to answer.

Each API owns its wire models and converts them into a `GenerationRequest` (server/protocol.py for
OpenAI's and the Copilot plugin's, server/ollama_protocol.py, server/infill.py); serving takes only
this, so a new API adds a conversion and bends no other API's schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from server.engine import ContextFile, SamplingParams
from server.settings import Settings


@dataclass(frozen=True)
class Texts:
    """Prompts to continue, each text or token ids; the code after the cursor (`suffix`, filled in the
    middle where the model has FIM sentinels) and other files of the project (`extra`) go with each."""

    items: list[str] | list[list[int]]
    suffix: str | None = None
    extra: tuple[ContextFile, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """Turns of a chat, rendered with the model's own chat template."""

    messages: list[dict[str, str]]  # {"role", "content"}


@dataclass(frozen=True)
class GenerationRequest:
    model: str | None  # None: the server's first model
    prompt: Texts | Conversation
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False  # a stream's closing usage event (OpenAI's stream_options.include_usage)
    cache_prompt: bool = True  # false: prefilled from scratch and not kept in the prefix cache
    ignored: list[str] = field(default_factory=list)  # fields the API took and cannot honour (X-Slipstream-Ignored)
    prediction: str | None = None  # the output expected (OpenAI's Predicted Outputs), verified as drafts

    def logged(self) -> object:
        """The prompt as the access log records it (with log_prompts)."""
        if isinstance(self.prompt, Conversation):
            return [m["content"] for m in self.prompt.messages]
        return self.prompt.items[0] if len(self.prompt.items) == 1 else self.prompt.items


def with_defaults(
    settings: Settings, asked: SamplingParams, *, max_tokens: int | None, temperature: float | None, speculative: bool | None = None
) -> SamplingParams:
    """`asked` (the request's other sampling fields) with its max_tokens, temperature and speculation:
    the request's value, else the server's default; every API falls back the same way."""
    return replace(
        asked,
        max_tokens=settings.default_max_tokens if max_tokens is None else max_tokens,
        temperature=settings.default_temperature if temperature is None else temperature,
        speculative=settings.speculative if speculative is None else speculative,
    )


__all__ = ["Conversation", "GenerationRequest", "Texts", "with_defaults"]
