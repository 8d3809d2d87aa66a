"""`slipstream eval load` against real server processes: a clean run loses nothing and reports its
percentiles; a server killed under load makes the run fail with its lost requests counted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, TINY, ServerProcess


def bench_load(url: str, out: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "slipstream.cli",
        "eval",
        "load",
        "--url",
        url,
        "--model",
        TINY,
        "--clients",
        "4",
        "--ramp",
        "1",
        "--prompt-tokens",
        "16",
        "--max-tokens",
        "8",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_clean_load_run(tiny_server, tmp_path: Path) -> None:
    run = bench_load(tiny_server.url, tmp_path, "--duration", "3")
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    assert result["passed"] and result["lost"] == 0 and result["errors"] == 0 and result["ok"] == result["requests"] > 4
    assert 0 < result["latency_s"]["p50"] <= result["latency_s"]["p95"] <= result["latency_s"]["p99"]
    assert result["ttft_s"]["p99"] > 0 and result["itl_s"]["p50"] > 0 and result["throughput_tok_s"] > 0
    assert {r["client"] for r in result["outcomes"]} == {0, 1, 2, 3}
    assert max(t["in_flight"] for t in result["timeline"]) <= 4
    assert "PASSED" in stdout and (tmp_path / "load.png").stat().st_size > 1000


def test_requests_cut_by_a_dying_server_are_counted_as_lost(tiny_repo: Path, tmp_path: Path) -> None:
    with ServerProcess(tiny_repo, [TINY]) as server:
        run = bench_load(server.url, tmp_path, "--duration", "4", "--max-tokens", "100")
        time.sleep(2.5)
        server.process.send_signal(signal.SIGKILL)  # no goodbye: streams in flight are cut
        stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 1, stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    assert not result["passed"] and result["lost"] >= 1 and result["first_lost"]
    assert "FAILED" in stdout
