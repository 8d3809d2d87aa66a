"""llama.cpp's /infill, for llama.vim, llama.vscode and the plugins built on them: the code before the
cursor (input_prefix + prompt, the line up to the cursor), after it (input_suffix), other files
(input_extra) laid out with the model's repository tokens and kept at the prompt's start so that
keystroke after keystroke hits the prefix cache; n_indent and t_max_predict_ms as llama.cpp's server
has them; `n_predict: 0` only fills the cache (llama.vim's warm-up as its context ring changes).
The answer is llama.cpp's: content, stop, tokens_cached, timings, response_fields; a stream of SSE
events without [DONE]; errors as {"error": {"code", "message", "type"}}."""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from server import serving
from server.app_state import app_state
from server.body import parse_body
from server.engine import ContextFile, Delta, SamplingParams
from server.error_shapes import InfillError
from server.generation import GenerationRequest, Texts, with_defaults
from server.openapi import route_doc
from server.protocol import InputExtra
from server.protocol import Usage as WireUsage
from server.responses import Collected, sse
from server.settings import Settings

router = APIRouter()
# llama.cpp's fields that this server takes and does not act on (named back in X-Slipstream-Ignored)
_NOT_DONE = ("samplers", "t_max_prompt_ms", "id_slot", "repeat_penalty", "typical_p", "n_probs")
_STOP_TYPE = {"stop": "eos", "length": "limit"}


class InfillRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input_prefix: str = ""
    input_suffix: str = ""
    prompt: str = ""  # the current line up to the cursor, after input_prefix
    input_extra: list[InputExtra] = Field(default_factory=list)
    n_predict: int = Field(-1, ge=-1, description="-1: the server's max_tokens default; 0: only fill the cache")
    n_indent: int = Field(0, ge=0)
    t_max_predict_ms: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)  # llama.cpp's default is 0.05; an editor that wants it sends it
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    seed: int | None = Field(None, ge=-1)  # -1: llama.cpp's "random"
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    cache_prompt: StrictBool = True
    response_fields: list[str] | None = None
    # --- slipstream extension, as on /v1/completions: verify drafts (timings then count them as llama.cpp's do) ---
    speculative: StrictBool | None = None

    def generation(self, settings: Settings) -> GenerationRequest:
        """The neutral request: the code before the cursor (input_prefix + prompt) to continue, input_suffix
        filled in the middle, input_extra as other files; n_predict -1 and seed -1 are the defaults."""
        extra = tuple(ContextFile(e.filename, e.text) for e in self.input_extra)
        asked = SamplingParams(
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            stop=tuple(self.stop),
            seed=None if self.seed in (None, -1) else self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            min_indent=self.n_indent,
            max_predict_s=self.t_max_predict_ms / 1000 if self.t_max_predict_ms else None,
        )
        params = with_defaults(
            settings,
            asked,
            max_tokens=None if self.n_predict < 0 else self.n_predict,
            temperature=self.temperature,
            speculative=self.speculative,
        )
        return GenerationRequest(
            model=self.model,
            prompt=Texts([self.input_prefix + self.prompt], self.input_suffix, extra),
            params=params,
            stream=self.stream,
            cache_prompt=self.cache_prompt,
            ignored=self.ignored(),
        )

    def ignored(self) -> list[str]:
        return [name for name in _NOT_DONE if name in (self.model_extra or {})]


class InfillShape:
    """llama.cpp's /infill answer: each streamed piece as {"content", "stop": false}, the last (or the
    whole answer) with stop, stop_type, the token counts, tokens_cached (prompt tokens the prefix cache
    gave) and timings; only `response_fields` (paths like timings/prompt_n, kept as keys) when asked."""

    media_type = "text/event-stream"

    def __init__(self, model: str, fields: list[str] | None) -> None:
        self._model, self._fields = model, fields
        self._started = time.perf_counter()
        self._first: float | None = None
        self._finish = "stop"
        self._predicted = 0
        self._newline = False

    def _project(self, data: dict[str, Any]) -> dict[str, Any]:
        if not self._fields:
            return data
        out = {}
        for path in self._fields:
            value: Any = data
            for part in path.split("/"):
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                out[path] = value
        return out

    def chunk(self, index: int, delta: Delta) -> str | None:
        self._first = self._first or time.perf_counter()
        self._finish = delta.finish_reason or self._finish
        if not delta.text:
            return None
        self._predicted += 1
        self._newline = self._newline or "\n" in delta.text
        return sse(json.dumps(self._project({"index": 0, "content": delta.text, "stop": False, "id_slot": 0})))

    def _final(self, usage: WireUsage, content: str) -> dict[str, Any]:
        end = time.perf_counter()
        first = self._first or end
        cached = usage.prompt_tokens_details.cached_tokens
        prompt_n, predicted_n = usage.prompt_tokens - cached, usage.completion_tokens
        prompt_ms, predicted_ms = 1000 * (first - self._started), 1000 * (end - first)
        timings = {
            "cache_n": cached,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
            "prompt_per_second": 1000 * prompt_n / prompt_ms if prompt_ms else 0.0,
            "predicted_n": predicted_n,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
            "predicted_per_second": 1000 * predicted_n / predicted_ms if predicted_ms else 0.0,
        }
        details = usage.completion_tokens_details
        if details.draft_tokens:  # as llama.cpp's server reports speculation, only where it drafted
            timings |= {"draft_n": details.draft_tokens, "draft_n_accepted": details.accepted_draft_tokens}
        return self._project(
            {
                "index": 0,
                "content": content,
                "id_slot": 0,
                "stop": True,
                "model": self._model,
                "tokens_predicted": predicted_n,
                "tokens_evaluated": usage.prompt_tokens,
                "tokens_cached": cached,
                "truncated": usage.prompt_tokens_trimmed > 0,
                "has_new_line": self._newline or "\n" in content,
                "stop_type": _STOP_TYPE.get(self._finish, "eos"),
                "stopping_word": "",
                "timings": timings,
            }
        )

    def closing(self, usage: WireUsage, include_usage: bool) -> list[str]:
        return [sse(json.dumps(self._final(usage, "")))]

    def error_event(self, message: str, kind: str) -> str:
        return sse(json.dumps({"error": {"code": 500, "message": message, "type": kind}}))

    def response(self, got: Collected) -> dict[str, Any]:
        self._finish = got.finish[0] or "stop"
        self._first = got.first_token_at
        return self._final(got.usage, got.texts[0])


@router.post("/infill", openapi_extra=route_doc(InfillRequest, error=InfillError))
async def infill(request: Request) -> Response:
    """Errors answer in llama.cpp's shape through the app's hook for this path (server/error_shapes.py)."""
    state = app_state(request)
    body = await parse_body(request, InfillRequest, state.settings.max_body_bytes)
    shape = lambda model: InfillShape(model, body.response_fields)  # noqa: E731
    return await serving.generate(state, body.generation(state.settings), request, shape)
