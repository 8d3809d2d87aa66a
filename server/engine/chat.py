"""Chat messages -> prompt text, through the model's own Jinja chat template (as transformers'
apply_chat_template renders it: sandboxed, trim_blocks/lstrip_blocks, loop controls, {% generation %}, its tojson and
strftime_now, the tools and documents variables, add_generation_prompt)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The template refused the conversation (e.g. roles out of order) or could not be rendered."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: object, ensure_ascii: bool = False, indent: int | None = None, separators: tuple | None = None, sort_keys: bool = False
) -> str:
    # transformers' own: non-ASCII text stays as it is (Jinja's built-in escapes it, and HTML-escapes too)
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)  # Llama 3.x templates put today's date in the system turn


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}`: transformers marks the assistant's tokens with it (for
    training masks); rendering a prompt keeps the text inside as it is (Phi-4-reasoning's template uses it)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_inside"), [], [], body).set_lineno(lineno)

    def _inside(self, caller) -> str:
        return caller()


def _is_content(node: nodes.Node, aliases: set[str]) -> bool:
    """`message['content']`, `message.content`, or a name set from one of them."""
    if isinstance(node, nodes.Getitem):
        return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
    if isinstance(node, nodes.Getattr):
        return node.attr == "content"
    return isinstance(node, nodes.Name) and node.name in aliases


@lru_cache(maxsize=8)
def reads_content_parts(template: str) -> bool:
    """Whether the template loops over a message's content: it expects OpenAI's list of parts
    ([{"type": "text", "text": ...}]). Gemma-3's first instruct template reads a system turn only that
    way (`messages[0]['content'][0]['text']`), so a plain string there fails. vLLM looks for such a loop
    too (its "openai" content format)."""
    try:
        tree = _environment().parse(template)
    except TemplateError:
        return False
    aliases = {
        assign.target.name
        for assign in tree.find_all(nodes.Assign)
        if isinstance(assign.target, nodes.Name) and _is_content(assign.node, set())
    }
    return any(_is_content(loop.iter, aliases) for loop in tree.find_all(nodes.For))


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=8)
def _compile(template: str):
    return _environment().from_string(template)


def render(
    template: str,
    messages: list[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
) -> str:
    """As transformers' apply_chat_template(..., add_generation_prompt=True, tokenize=False) renders it.
    Each message's text goes in as a string; a template that fails on strings and loops over content
    gets it again as OpenAI's list of one text part (Gemma-3's first instruct template takes a system
    turn only that way; Cogito's loops over parts but adds the system turn as a string)."""
    variables = dict(add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token, tools=tools, documents=documents)
    try:
        compiled = _compile(template)
        return compiled.render(messages=messages, **variables)
    except ChatTemplateError:
        raise  # the template refused the conversation itself (raise_exception)
    except Exception as exc:  # a template is a program: TemplateError, and TypeError etc. from its expressions
        failure = ChatTemplateError(f"the model's chat template failed: {type(exc).__name__}: {exc}")
        if not reads_content_parts(template):  # (a template that does not parse reads none)
            raise failure from exc
    parts = [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    try:
        return compiled.render(messages=parts, **variables)
    except Exception:
        raise failure from None
