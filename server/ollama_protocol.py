"""Wire models of Ollama's API (/api/generate, /api/chat, /api/show), as Continue, Twinny and the
official `ollama` client send them, and their mapping onto our completion and chat requests.

Ollama streams unless told not to (`stream` defaults to true), names models `name:tag`, and takes its
sampling parameters in `options`. Options we do not implement are served without and named in
X-Slipstream-Ignored, as a suffix on a model without FIM sentinels is."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest

# what Ollama's options hold that the engine does not do (context size, mirostat, ...): named back as ignored
_SUPPORTED_OPTIONS = frozenset({"temperature", "top_p", "top_k", "num_predict", "stop", "seed",
                                "presence_penalty", "frequency_penalty"})


class Options(BaseModel):
    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    num_predict: int | None = Field(None, ge=-2, description="-1: until the end; -2: fill the context (Ollama)")
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)

    def ignored(self) -> list[str]:
        return [f"options.{name}" for name in sorted(self.model_extra or {}) if name not in _SUPPORTED_OPTIONS]

    def sampling(self) -> dict[str, Any]:
        """As our request's fields; num_predict below 0 (to the end, to the context) is the server's own
        max_tokens default, as a request without max_tokens gets."""
        fields: dict[str, Any] = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                                  "stop": self.stop, "seed": self.seed, "presence_penalty": self.presence_penalty,
                                  "frequency_penalty": self.frequency_penalty,
                                  "max_tokens": self.num_predict if self.num_predict is not None and self.num_predict >= 0 else None}
        return {k: v for k, v in fields.items() if v is not None}


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
        return [*self.options.ignored(), *(["keep_alive"] if self.keep_alive is not None else []),
                *(["logprobs"] if self.logprobs else []), *(["think"] if self.think else [])]


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

    def completion(self, served: str) -> CompletionRequest:
        return CompletionRequest(model=served, prompt=self.prompt, suffix=self.suffix or None, stream=self.stream,
                                 **self.options.sampling())

    def chat(self, served: str) -> ChatCompletionRequest:
        """raw false on a model with a chat template: the prompt is a user turn (after the system prompt)."""
        messages = [*([ChatMessage(role="system", content=self.system)] if self.system else []),
                    ChatMessage(role="user", content=self.prompt)]
        return ChatCompletionRequest(model=served, messages=messages, stream=self.stream, **self.options.sampling())


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

    def chat(self, served: str) -> ChatCompletionRequest:
        messages = [ChatMessage(role=m.role, content=m.content) for m in self.messages]
        return ChatCompletionRequest(model=served, messages=messages, stream=self.stream, **self.options.sampling())


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
