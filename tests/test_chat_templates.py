"""Chat templates rendered as transformers renders them (its own render_jinja_template is the reference):
the bundled SmolLM2's real template, and templates that use what Llama 3.x, Qwen2.5 and Gemma-3
instruct templates use: strftime_now for today's date, {% break %}, tojson on non-ASCII text and the
tools variable, raise_exception."""

from __future__ import annotations

import pytest
from transformers.utils.chat_template_utils import render_jinja_template

from server.engine.chat import ChatTemplateError, render
from server.models.store import read_manifest

MESSAGES = [{"role": "system", "content": "Réponds en français, s'il te plaît."},
            {"role": "user", "content": "Écris une fonction qui ajoute deux nombres."},
            {"role": "assistant", "content": "def ajoute(a, b):\n    return a + b"},
            {"role": "user", "content": "Et qui les multiplie ? ✓"}]
TOOLS = [{"type": "function", "function": {"name": "météo", "description": "le temps qu'il fait",
                                           "parameters": {"type": "object", "properties": {"ville": {"type": "string"}}}}}]

TEMPLATES = {
    # today's date in the system turn, as Llama 3.1-3.3 do (with their fallback when strftime_now is missing)
    "date": ("{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}"
             "{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
             "{{ bos_token }}Today Date: {{ date_string }}\n{% for m in messages %}<{{ m.role }}>{{ m.content }}\n"
             "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"),
    # loop controls: the last user turn found with {% break %}
    "break": ("{% for m in messages | reverse %}{% if m.role == 'user' %}{% set ns = m.content %}LAST: {{ ns }}"
              "{% break %}{% endif %}{% endfor %}{% for m in messages %}{% if m.role == 'system' %}{% continue %}"
              "{% endif %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"),
    # tools as JSON in the system turn (Qwen2.5, Llama 3.x): no ASCII escaping of the accents
    "tools": ("{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>{% endif %}"
              "{{ messages[-1] | tojson(indent=2) }}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    # role checks as Gemma-3's template makes them
    "roles": ("{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
              "{{ raise_exception('Conversation roles must be user or assistant') }}{% endif %}"
              "<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n{{ m.content | trim }}<end_of_turn>\n"
              "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
}


def transformers_renders(template: str, tools: list | None = None) -> str:
    rendered, _ = render_jinja_template([MESSAGES], tools=tools, chat_template=template, add_generation_prompt=True,
                                        bos_token="<s>", eos_token="</s>")
    return rendered[0]


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
