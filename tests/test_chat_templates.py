"""Chat templates rendered as transformers renders them (its own render_jinja_template is the reference):
real models' templates (Llama 3.1/3.2, Qwen2.5, Gemma-3 instruct, SmolLM2 and the rest of Ollama's
library, read from @huggingface/ollama-utils by testkit/real_templates.py; the bundled SmolLM2's from
its GGUF), through a real server too, and small templates for each feature they use: strftime_now,
{% break %}, tojson on non-ASCII text and the tools variable, raise_exception."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from server.engine import Prompter
from server.engine.chat import ChatTemplateError, render
from server.models.store import read_manifest, write_manifest
from testkit.real_templates import real_chat_templates
from tests.conftest import TINY_LLAMA, ServerProcess

MESSAGES = [
    {"role": "system", "content": "Réponds en français, s'il te plaît."},
    {"role": "user", "content": "Écris une fonction qui ajoute deux nombres."},
    {"role": "assistant", "content": "def ajoute(a, b):\n    return a + b"},
    {"role": "user", "content": "Et qui les multiplie ? ✓"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "météo",
            "description": "le temps qu'il fait",
            "parameters": {"type": "object", "properties": {"ville": {"type": "string"}}},
        },
    }
]

TEMPLATES = {
    # today's date in the system turn, as Llama 3.1-3.3 do (with their fallback when strftime_now is missing)
    "date": (
        "{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
        "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
        "{{ bos_token }}Today Date: {{ date_string }}\n{% for m in messages %}<{{ m.role }}>{{ m.content }}\n"
        "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
    ),
    # loop controls: the last user turn found with {% break %}
    "break": (
        "{% for m in messages | reverse %}{% if m.role == 'user' %}{% set ns = m.content %}LAST: {{ ns }}"
        "{% break %}{% endif %}{% endfor %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}"
        "{% endif %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    ),
    # tools as JSON in the system turn (Qwen2.5, Llama 3.x): no ASCII escaping of the accents
    "tools": (
        "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>{% endif %}"
        "{{ messages[-1] | tojson(indent=2) }}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    ),
    # role checks as Gemma-3's template makes them
    "roles": (
        "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
        "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
        "<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n{{ m.content | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}


# what each real template is tested with: (messages, tools)
CONVERSATIONS = {
    "system": (MESSAGES, None),
    "no system": (MESSAGES[1:], None),
    "tools": (MESSAGES, TOOLS),
    "one turn": (MESSAGES[1:2], None),
}
MODELS = [
    "library/llama3.1:8b",
    "library/llama3.2:3b",
    "library/qwen2.5:0.5b",
    "library/qwen2.5-coder:1.5b",
    "library/gemma3:270m",
    "library/gemma3:1b",
    "library/smollm2:135m",
]


def transformers_renders(template: str, tools: list | None = None, messages: list[dict] = MESSAGES) -> str:
    rendered, _ = render_jinja_template(
        [messages], tools=tools, chat_template=template, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )
    return rendered[0]


def as_parts(messages: list[dict]) -> list[dict]:
    """OpenAI's other content form: a list of text parts."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} for m in messages]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
def test_real_templates_render_as_transformers(model: str, conversation: str) -> None:
    template = real_chat_templates()[model]
    messages, tools = CONVERSATIONS[conversation]
    ours = render(template, messages, bos_token="<s>", eos_token="</s>", tools=tools)
    if model == "library/gemma3:1b" and conversation in ("system", "tools"):
        # its template reads a system turn only as a list of parts: transformers fails on the string
        with pytest.raises(Exception):  # noqa: B017 - whichever error transformers' Jinja raises
            transformers_renders(template, tools, messages)
        assert ours == transformers_renders(template, tools, as_parts(messages))
        assert ours.startswith("<s><start_of_turn>user\nRéponds en français, s'il te plaît.\n\nÉcris")
    else:
        assert ours == transformers_renders(template, tools, messages)
    assert messages[-1]["content"] in ours


def test_llama_3_2_puts_today_in_the_system_turn() -> None:
    ours = render(real_chat_templates()["library/llama3.2:3b"], MESSAGES)
    assert f"Today Date: {datetime.now().strftime('%d %b %Y')}\n" in ours and "26 Jul 2024" not in ours


def test_every_template_in_ollamas_library_renders_or_refuses_as_transformers() -> None:
    """All of them: where transformers renders the conversation, ours is the same text; where it fails
    (a template refusing a system turn, one needing its own variables), ours is a ChatTemplateError."""
    templates = real_chat_templates()
    assert len(templates) >= 90
    rendered = refused = 0
    for model, template in templates.items():
        for conversation, (messages, tools) in CONVERSATIONS.items():
            try:
                expected = transformers_renders(template, tools, messages)
            except Exception:
                try:
                    expected = transformers_renders(template, tools, as_parts(messages))
                except Exception:
                    with pytest.raises(ChatTemplateError):
                        render(template, messages, bos_token="<s>", eos_token="</s>", tools=tools)
                    refused += 1
                    continue
            assert render(template, messages, bos_token="<s>", eos_token="</s>", tools=tools) == expected, (model, conversation)
            rendered += 1
    assert rendered > 9 * refused  # most render: a broken renderer would refuse them all


@pytest.fixture(scope="module")
def real_template_server(tiny_llama_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny Llama served three times over, each copy with a real model's chat template."""
    repository = tmp_path_factory.mktemp("real_templates")
    names = {"with-llama3.2": "library/llama3.2:3b", "with-gemma3-1b": "library/gemma3:1b", "with-gemma2": "library/gemma2:2b"}
    for name, model in names.items():
        shutil.copytree(tiny_llama_repo / TINY_LLAMA, repository / name)
        manifest = read_manifest(tiny_llama_repo, TINY_LLAMA)
        write_manifest(repository, manifest.model_copy(update={"name": name, "chat_template": real_chat_templates()[model]}))
    with ServerProcess(repository, list(names)) as server:
        yield server, repository


def test_a_server_chats_through_real_templates(real_template_server) -> None:
    server, repository = real_template_server
    for name in ("with-llama3.2", "with-gemma3-1b"):
        r = httpx.post(f"{server.url}/v1/chat/completions", json={"model": name, "messages": MESSAGES, "max_tokens": 2}, timeout=60)
        assert r.status_code == 200, r.text
        prompter = Prompter(repository, name)
        assert r.json()["usage"]["prompt_tokens"] == len(prompter.prepare(prompter.chat_prompt(MESSAGES), 2, raw=False).ids)
    # Gemma-2's template refuses a system turn: the client is told why, as a 400
    refused = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "with-gemma2", "messages": MESSAGES, "max_tokens": 2}, timeout=60
    )
    assert refused.status_code == 400 and "System role not supported" in refused.json()["error"]["message"]
    alone = httpx.post(
        f"{server.url}/v1/chat/completions", json={"model": "with-gemma2", "messages": MESSAGES[1:], "max_tokens": 2}, timeout=60
    )
    assert alone.status_code == 200, alone.text


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_as_transformers_renders(name: str) -> None:
    template = TEMPLATES[name]
    tools = TOOLS if name == "tools" else None
    ours = render(template, MESSAGES, bos_token="<s>", eos_token="</s>", tools=tools)
    assert ours == transformers_renders(template, tools)
    if name == "tools":
        assert "météo" in ours and "✓" in ours  # not \\u00e9t\\u00e9o


@pytest.mark.bundled
def test_the_bundled_smollm2_template(bundled_repo) -> None:
    template = read_manifest(bundled_repo, "smollm2-135m").chat_template
    assert template is not None
    assert render(template, MESSAGES) == transformers_renders(template)


def test_a_template_that_refuses_the_conversation() -> None:
    with pytest.raises(ChatTemplateError, match="roles must be user or assistant"):
        render(TEMPLATES["roles"], [{"role": "tool", "content": "x"}])


@pytest.mark.parametrize(
    "template, says",
    [
        ("{% for m in messages %}{{ m.content }", "TemplateSyntaxError"),  # does not parse
        ("{{ messages[0].content + 1 }}", "TypeError"),  # an expression that fails
        ("{{ messages[5].content }}", "UndefinedError"),
    ],
)
def test_a_broken_template_is_a_chat_template_error(template: str, says: str) -> None:
    with pytest.raises(ChatTemplateError, match=f"the model's chat template failed: {says}"):
        render(template, MESSAGES)
