"""The harness against a server with API keys on (as ours with SLIPSTREAM_API_KEYS, vLLM with --api-key,
a hosted API): the key from --api-key, SLIPSTREAM_API_KEY or OPENAI_API_KEY, sent as a bearer, never
printed; without it the command fails saying so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, ServerProcess

KEY = "harness-key-123456"


@pytest.fixture(scope="module")
def keyed(tiny_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_repo, [TINY], env={"SLIPSTREAM_API_KEYS": KEY}) as server:
        yield server


def slipstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("SLIPSTREAM_API_KEY", "OPENAI_API_KEY")}
    return subprocess.run(
        [sys.executable, "-m", "slipstream.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env={**clean, **(env or {})}
    )


def test_complete_with_the_flag_and_without_a_key(keyed: ServerProcess) -> None:
    done = slipstream("complete", "def f():", "--url", keyed.url, "--max-tokens", "4", "--api-key", KEY)
    assert done.returncode == 0, done.stderr
    refused = slipstream("complete", "def f():", "--url", keyed.url, "--max-tokens", "4")
    assert refused.returncode == 1 and "401" in refused.stderr and "API key" in refused.stderr


@pytest.mark.parametrize("variable", ["SLIPSTREAM_API_KEY", "OPENAI_API_KEY"])
def test_eval_latency_measures_a_keyed_server(keyed: ServerProcess, tmp_path: Path, variable: str) -> None:
    done = slipstream(
        "eval",
        "latency",
        "--url",
        keyed.url,
        "--prompt-tokens",
        "16",
        "--max-tokens",
        "4",
        "--concurrency",
        "1",
        "--requests",
        "2",
        "--out",
        str(tmp_path),
        env={variable: KEY},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cells = json.loads((tmp_path / "latency.json").read_text())
    assert cells[0]["errors"] == 0 and cells[0]["requests"] == 2
    assert KEY not in done.stdout + done.stderr + "".join(p.read_text() for p in tmp_path.glob("*.md"))


def test_eval_latency_without_the_key_reports_the_refusals(keyed: ServerProcess, tmp_path: Path) -> None:
    done = slipstream(
        "eval",
        "latency",
        "--url",
        keyed.url,
        "--prompt-tokens",
        "16",
        "--max-tokens",
        "4",
        "--concurrency",
        "1",
        "--requests",
        "2",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 1 and "HTTP 401: no API key" in done.stderr
