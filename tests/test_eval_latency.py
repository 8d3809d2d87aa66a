"""`slipstream eval latency` against a real server process (the tiny CodeGen)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, TINY


def latency(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "slipstream.cli", "eval", "latency", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_sweep_writes_json_csv_and_plots(tiny_server, tmp_path: Path) -> None:
    done = latency(
        "--url",
        tiny_server.url,
        "--prompt-tokens",
        "16,48",
        "--max-tokens",
        "8",
        "--concurrency",
        "1,2",
        "--requests",
        "3",
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads((tmp_path / "latency.json").read_text())
    assert [(c["cell"]["prompt_tokens"], c["cell"]["concurrency"]) for c in cells] == [(16, 1), (16, 2), (48, 1), (48, 2)]
    for c in cells:
        assert c["cell"]["model"] == TINY and c["errors"] == 0 and c["requests"] == 3
        assert 0 < c["ttft_s"]["p50"] <= c["ttft_s"]["p95"] <= c["ttft_s"]["p99"] <= c["e2e_s"]["p99"]
        assert c["itl_s"]["p50"] > 0 and c["throughput_tok_s"] > 0
        assert c["measured_prompt_tokens"] > 0
    short, long = cells[0]["measured_prompt_tokens"], cells[2]["measured_prompt_tokens"]
    assert long > short  # longer prompts really are longer
    rows = list(csv.DictReader((tmp_path / "latency.csv").open()))
    assert len(rows) == 4 and {"ttft_p99_s", "itl_p50_s", "e2e_p95_s", "throughput_tok_s", "error_rate"} <= set(rows[0])
    for plot in ("latency_vs_prompt.png", "throughput_vs_concurrency.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    table = (tmp_path / "latency.md").read_text().splitlines()
    assert sum(line.startswith(f"| {tiny_server.url} | {TINY} |") for line in table) == 4
    page = subprocess.run(
        [sys.executable, "-m", "slipstream.cli", "eval", "report", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert page.returncode == 0 and "![latency_vs_prompt.png](latency_vs_prompt.png)" in (tmp_path / "index.md").read_text()


def test_a_model_no_server_serves_is_a_clear_error(tiny_server, tmp_path: Path) -> None:
    done = latency("--url", tiny_server.url, "--model", "nope", "--requests", "1", "--out", str(tmp_path))
    assert done.returncode == 1 and "does not serve nope" in done.stdout and "no cell to measure" in done.stderr
