"""Wire models of Ollama's API (/api/generate, /api/chat, /api/show), as Continue, Twinny and the
official `ollama` client send them, and their conversion into the neutral request (server/generation.py).

Ollama streams unless told not to (`stream` defaults to true), names models `name:tag`, and takes its
sampling parameters in `options`. Options we do not implement are served without and named in
X-Slipstream-Ignored, as a suffix on a model without FIM sentinels is."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from server.engine import SamplingParams
from server.generation import Conversation, GenerationRequest, Texts, with_defaults
from server.settings import Settings

# what Ollama's options hold that the engine does not do (context size, mirostat, ...): named back as ignored
_SUPPORTED_OPTIONS = frozenset(
    {"temperature", "top_p", "top_k", "min_p", "num_predict", "stop", "seed", "presence_penalty", "frequency_penalty"}
)


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    num_predict: int | None = Field(None, ge=-2, description="-1: until the end; -2: fill the context (Ollama)")
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)

    def ignored(self) -> list[str]:
        return [f"options.{name}" for name in sorted(self.model_extra or {}) if name not in _SUPPORTED_OPTIONS]

    def params(self, settings: Settings) -> SamplingParams:
        """As our sampling parameters; num_predict below 0 (to the end, to the context) is the server's own
        max_tokens default, as a request without max_tokens gets."""
        asked = SamplingParams(
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            min_p=self.min_p or 0.0,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
        )
        to_end = self.num_predict is None or self.num_predict < 0
        return with_defaults(settings, asked, max_tokens=None if to_end else self.num_predict, temperature=self.temperature)


class _OllamaRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    stream: bool = True  # Ollama's default
    options: Options = Field(default_factory=Options)
    format: str | dict | None = None
    keep_alive: str | int | float | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def unsupported(self) -> str | None:
        """The first field asked for that no model here does (structured output), else None."""
        return "format" if self.format else None

    def served_name(self) -> str:
        """`name:latest` is `name`: Ollama's clients add the default tag."""
        return self.model.removesuffix(":latest")

    def common_ignored(self) -> list[str]:
        # keep_alive asks to unload (0) or keep a model: every model here stays loaded while the server runs
        return [
            *self.options.ignored(),
            *(["keep_alive"] if self.keep_alive is not None else []),
            *(["logprobs"] if self.logprobs else []),
            *(["think"] if self.think else []),
        ]

    def _generation(self, settings: Settings, served: str, prompt: Texts | Conversation, ignored: list[str]) -> GenerationRequest:
        return GenerationRequest(
            model=served,
            prompt=prompt,
            params=self.options.params(settings),
            stream=self.stream,
            ignored=[*self.common_ignored(), *ignored],
        )


class GenerateRequest(_OllamaRequest):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    context: list[int] | None = None
    images: list[str] | None = None

    def unsupported(self) -> str | None:
        return "images" if self.images else super().unsupported()

    def generation(self, settings: Settings, served: str, chats: bool) -> GenerationRequest:
        """A prompt to continue (with its suffix filled in the middle), or, with raw false on a model that
        `chats` (has a chat template), a user turn after the system prompt."""
        ignored = [f for f in ("template", "context") if getattr(self, f)]
        if not self.raw and self.suffix is None and chats:
            messages = [*([{"role": "system", "content": self.system}] if self.system else []), {"role": "user", "content": self.prompt}]
            return self._generation(settings, served, Conversation(messages), ignored)
        if self.system:
            ignored.append("system")  # a raw prompt, or a model without a chat template, has nowhere to put it
        return self._generation(settings, served, Texts([self.prompt], self.suffix or None), ignored)


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None


class ChatRequest(_OllamaRequest):
    messages: list[ChatTurn] = Field(min_length=1)
    tools: list[dict] | None = None

    def unsupported(self) -> str | None:
        if self.tools:
            return "tools"
        return "messages.images" if any(m.images for m in self.messages) else super().unsupported()

    def generation(self, settings: Settings, served: str) -> GenerationRequest:
        messages = [{"role": m.role, "content": m.content} for m in self.messages]
        return self._generation(settings, served, Conversation(messages), [])


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    name: str | None = None  # older clients' field

    def served_name(self) -> str | None:
        chosen = self.model or self.name
        return chosen.removesuffix(":latest") if chosen else None


class OllamaError(BaseModel):
    """Ollama's error answer."""

    error: str
