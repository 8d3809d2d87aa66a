"""Chat messages -> prompt text, through the model's own Jinja chat template (as transformers'
apply_chat_template renders it: sandboxed, trim_blocks/lstrip_blocks, add_generation_prompt)."""

from __future__ import annotations

from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template refused the conversation (e.g. roles out of order) or could not be rendered."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render(template: str, messages: list[dict[str, str]], *, bos_token: str = "", eos_token: str = "") -> str:
    try:
        return _compile(template).render(
            messages=messages, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
        )
    except ChatTemplateError:
        raise
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template failed: {exc}") from exc
