"""GitHub's own Copilot language server (the agent inside the VS Code extension, copilot.vim and
copilot.lua; @github/copilot-language-server, installed by `make test` from tests/plugins) driven
over LSP as an editor drives it, against a real `slipstream serve` with API keys on: the agent signs
in with GH_COPILOT_TOKEN (one of our keys), takes its session from our /copilot_internal routes and
completes through /v1/engines/{model}/completions. Offline: every request it makes to an API goes
to this server, as the access log shows."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.lsp import LanguageServer
from testkit.server_process import ServerProcess

pytestmark = pytest.mark.bundled
ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "tests/plugins/node_modules/@github/copilot-language-server-linux-x64/copilot-language-server"
KEY = "copilot-agent-test-key"
MODEL = "smollm2-135m"
DOCUMENT = "def add(a, b):\n    return a + b\n\n\ndef multiply(a, b):\n    return "
CURSOR = {"line": 5, "character": len("    return ")}


@pytest.fixture(scope="module")
def keyed_server(bundled_repo: Path) -> Iterator[ServerProcess]:
    env = {"SLIPSTREAM_API_KEYS": KEY, "SLIPSTREAM_LOG_PROMPTS": "true"}
    with ServerProcess(bundled_repo, [MODEL], env=env) as server:
        yield server


def settings() -> dict[str, Any]:
    """The editor's settings, by the sections the agent asks for: none of its own is needed (the session
    token's endpoints send it here); telemetry off, as the README says."""
    return {"github.copilot": {}, "telemetry": {"telemetryLevel": "off"}, "http": {}, "github-enterprise": {}}


def start_agent(url: str, token: str, home: Path) -> LanguageServer:
    if not AGENT.exists():
        pytest.fail(f"{AGENT} is missing: `make test` installs it (npm install in tests/plugins)")
    env = {
        "GH_COPILOT_TOKEN": token,
        "GH_COPILOT_API_URL": url,
        "GH_COPILOT_SERVER_URL": url,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }
    config = settings()

    def configuration(params: dict[str, Any]) -> list[Any]:  # the agent pulls its settings by section
        return [config.get(item.get("section", ""), None) for item in params.get("items", [])]

    agent = LanguageServer(
        [str(AGENT), "--stdio"], home / "agent.log", env=env, handlers={"workspace/configuration": configuration}, cwd=home
    )
    workspace = (home / "project").as_uri()
    agent.request(
        "initialize",
        {
            "processId": os.getpid(),
            "workspaceFolders": [{"uri": workspace, "name": "project"}],
            "capabilities": {"workspace": {"workspaceFolders": True, "configuration": True}},
            "initializationOptions": {
                "editorInfo": {"name": "slipstream-tests", "version": "1.0"},
                "editorPluginInfo": {"name": "slipstream-tests", "version": "1.0"},
            },
        },
    )
    agent.notify("initialized", {})
    return agent


def inline_completion(agent: LanguageServer, uri: str, attempts: int = 5) -> dict[str, Any]:
    """The editor's ask for ghost text at CURSOR, again while the agent is still signing in (it answers
    its first asks with an error until its session is there)."""
    for attempt in range(attempts):
        try:
            result = agent.request(
                "textDocument/inlineCompletion",
                {
                    "textDocument": {"uri": uri, "version": 1},
                    "position": CURSOR,
                    "context": {"triggerKind": 2},
                    "formattingOptions": {"tabSize": 4, "insertSpaces": True},
                },
                timeout=120,
            )
        except RuntimeError as exc:
            if attempt == attempts - 1:
                raise AssertionError(f"the agent never completed: {exc}\n{agent.tail()}") from exc
            time.sleep(1)
            continue
        if result and result.get("items"):
            return result
        time.sleep(1)
    raise AssertionError(f"the agent returned no completion item:\n{agent.tail()}")


def logged_after(server: ServerProcess, before: int) -> list[dict[str, Any]]:
    """The access-log lines since `before`, once the completion's is there (a line is written as its
    response ends, which the agent may see first)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [line for line in server.access_log()[before:] if line["route"] != "/ready"]
        if any(line["route"] == "/v1/engines/{engine}/completions" for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_copilot_agent_completes_from_our_server(keyed_server: ServerProcess, tmp_path: Path) -> None:
    logged_before = len(keyed_server.access_log())
    uri = (tmp_path / "project" / "maths.py").as_uri()
    (tmp_path / "project").mkdir()
    with start_agent(keyed_server.url, KEY, tmp_path) as agent:
        agent.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": DOCUMENT}})
        item = inline_completion(agent, uri)["items"][0]
    requests = logged_after(keyed_server, logged_before)
    completions = [line for line in requests if line["route"] == "/v1/engines/{engine}/completions"]
    assert completions, requests
    made = completions[-1]
    # the agent named our model (from our /models) in the path, streamed, and sent the file's path and code
    assert made["model"] == MODEL and made["stream"] is True
    assert made["prompt"].startswith("# Path: maths.py") and made["prompt"].endswith("    return ")
    generated = {text for line in completions for text in line["completions"]}
    assert all(text.strip() for text in generated), made
    # what the editor gets is a text our server generated, after what the line already holds (matched by
    # text, not by position: the agent may ask more than once, for more than one choice, and order its items)
    assert item["insertText"] in {"    return " + text.rstrip() for text in generated}, (item, generated)
    assert item["range"]["start"] == {"line": CURSOR["line"], "character": 0}
    # every request it made came here, with its bearer accepted: nothing refused, nothing unknown
    routes = {line["route"] for line in requests}
    assert {"/copilot_internal/v2/token", "/models", "/v1/engines/{engine}/completions"} <= routes, routes
    assert all(line["status"] == 200 for line in requests), [(r["route"], r["status"]) for r in requests]


def test_copilot_agent_with_a_wrong_key_gets_nothing(keyed_server: ServerProcess, tmp_path: Path) -> None:
    logged_before = len(keyed_server.access_log())
    uri = (tmp_path / "project" / "maths.py").as_uri()
    (tmp_path / "project").mkdir()
    with start_agent(keyed_server.url, "not-one-of-the-keys", tmp_path) as agent:
        agent.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": DOCUMENT}})
        with pytest.raises(AssertionError):
            inline_completion(agent, uri, attempts=2)
    requests = keyed_server.access_log()[logged_before:]
    assert any(line["route"] == "/copilot_internal/v2/token" and line["status"] == 401 for line in requests), requests
    assert not any(line["route"] == "/v1/engines/{engine}/completions" for line in requests)
