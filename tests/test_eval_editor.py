"""`slipstream eval editor` against the tiny real server: sessions of a real file replayed word by word,
cold and warm; each request completed or cancelled (none lost); with a typist faster than the server,
requests in flight are cancelled (and the server sees them go); a server that is not there is a clear
error."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from eval.editor_sessions import build, read_files
from tests.conftest import ROOT, TINY, free_port

FILE = Path(textwrap.__file__)  # a real Python module, the same on every machine with this Python
PROMPT_CHARS = 300  # the tiny model's context is 128 tokens


def editor(url: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "slipstream.cli",
        "eval",
        "editor",
        "--url",
        url,
        "--name",
        "tiny",
        "--model",
        TINY,
        "--files",
        str(FILE),
        "--sessions",
        "2",
        "--words",
        "8",
        "--prompt-chars",
        str(PROMPT_CHARS),
        "--max-tokens",
        "8",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def cancelled_on_server(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("slipstream_cancelled_requests_total{") and f'model="{TINY}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_sessions_share_their_prefix_and_keep_to_the_budget() -> None:
    texts = read_files([FILE])
    sessions = build(texts, sessions=2, words=8, prompt_chars=PROMPT_CHARS)
    assert len(sessions) == 2 and all(len(s.cursors) == 8 for s in sessions)
    assert sessions[0].cursors[-1] < sessions[1].cursors[0]  # spread over the file, not overlapping
    for s in sessions:
        prompts = s.prompts(texts[str(FILE)])
        assert all(b.startswith(a) and len(b) > len(a) for a, b in zip(prompts, prompts[1:], strict=False))
        assert len(prompts[-1]) <= PROMPT_CHARS and s.window_start > 0
        assert texts[str(FILE)][s.window_start - 1] == "\n"  # a window starts at a line


def test_one_at_a_time_then_a_typist_faster_than_the_server(tiny_server, tmp_path: Path) -> None:
    done = editor(tiny_server.url, tmp_path / "serial")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[tiny] cold textwrap.py #0: 8 requests" in done.stdout and "[tiny] warm textwrap.py #1" in done.stdout
    data = json.loads((tmp_path / "serial" / "editor.json").read_text())
    server = data["runs"][0]["servers"][0]
    assert server["model"] == TINY and len(server["requests"]) == 32
    for phase in ("cold", "warm"):
        s = server["passes"][phase]
        assert s["requests"] == s["completed"] == 16 and s["cancelled"] == s["error"] == s["lost"] == 0
        assert 0 < s["ttft_ms"]["p50"] <= s["ttft_ms"]["p90"] <= s["ttft_ms"]["p99"]
        assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p90"] <= s["latency_ms"]["p99"]
        reported = [r for r in server["requests"] if r["phase"] == phase and r["cached_tokens"] is not None]
        expected = sum(r["cached_tokens"] for r in reported) / sum(r["prompt_tokens"] for r in reported) if reported else None
        assert s["reused_share"] == expected and s["prompt_tokens_mean"] > 0
    markdown = (tmp_path / "serial" / "editor.md").read_text()
    assert "| tiny | cold | 16 | 16 (100%) | 0 (0) |" in markdown and "| tiny | warm |" in markdown
    assert (tmp_path / "serial" / "editor.png").stat().st_size > 1000

    # the next word comes between the first text and the end of a typical completion: most are cut mid-stream
    cold = server["passes"]["cold"]
    word_ms = max(1.0, (cold["ttft_ms"]["p50"] + cold["latency_ms"]["p50"]) / 2)
    before = cancelled_on_server(tiny_server.url)
    done = editor(tiny_server.url, tmp_path / "typist", "--word-ms", f"{word_ms:.1f}")
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "typist" / "editor.json").read_text())
    server, word_s = data["runs"][0]["servers"][0], data["config"]["word_ms"] / 1000
    for phase in ("cold", "warm"):
        s = server["passes"][phase]
        assert s["completed"] + s["cancelled"] == s["requests"] == 16 and s["error"] == s["lost"] == 0
        assert s["shown_share"] == s["completed"] / 16  # the suggestions shown before the next word
    assert sum(server["passes"][p]["cancelled"] for p in ("cold", "warm")) >= 1
    for phase in ("cold", "warm"):
        for index in (0, 1):
            sent = [r["sent_s"] for r in server["requests"] if r["phase"] == phase and r["session"] == index]
            # word i comes i x word_ms after the first, not before (give or take the event loop's clock resolution)
            assert all(t - sent[0] >= i * word_s - 1e-3 for i, t in enumerate(sent)), sent
            last = [r for r in server["requests"] if r["phase"] == phase and r["session"] == index][-1]
            assert last["outcome"] == "completed"  # no keystroke after the last word
    # the closed streams reach the server: it notices a client gone at its next poll of the connection,
    # which may come after the replay has ended (a busy machine), so the counter is waited for, bounded
    deadline = time.monotonic() + 15
    while cancelled_on_server(tiny_server.url) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cancelled_on_server(tiny_server.url) > before


def test_a_server_that_is_not_there(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = editor(url, tmp_path)
    assert done.returncode == 2
    assert f"error: tiny: no server answers at {url}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "editor.json").exists()
