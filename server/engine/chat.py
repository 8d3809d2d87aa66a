"""Chat messages -> prompt text, through the model's own Jinja chat template (as transformers'
apply_chat_template renders it: sandboxed, trim_blocks/lstrip_blocks, loop controls, its tojson and
strftime_now, the tools and documents variables, add_generation_prompt)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template refused the conversation (e.g. roles out of order) or could not be rendered."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(value: object, ensure_ascii: bool = False, indent: int | None = None, separators: tuple | None = None,
            sort_keys: bool = False) -> str:
    # transformers' own: non-ASCII text stays as it is (Jinja's built-in escapes it, and HTML-escapes too)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)  # Llama 3.x templates put today's date in the system turn


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(template)


def render(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "",
           tools: list[dict] | None = None, documents: list[dict] | None = None) -> str:
    """As transformers' apply_chat_template(..., add_generation_prompt=True, tokenize=False) renders it."""
    try:
        return _compile(template).render(
            messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token, tools=tools,
            documents=documents,
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template failed: {exc}") from exc
