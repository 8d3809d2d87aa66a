"""Faults under real processes: a Triton killed and restarted under load (nothing lost, the API stays up
and recovers, no shared memory left behind), and a HumanEval run across a server restart (it rides
through by itself; when the server stays away past the retry window it stops, and the same command
finishes it, with every sample exactly once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from client.api import Client
from server.triton.launch import Ports
from testkit.triton_process import TritonCommand
from tests.conftest import ROOT, TINY, ServerProcess

PROBLEMS, SAMPLES = 20, 2  # HumanEval problems x samples per problem in the eval runs below


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# --- a Triton killed and restarted mid-load ---------------------------------------------------------


def completed(api: ServerProcess) -> int:
    """Completions the API has answered whole, from its access log."""
    return sum(line["route"] == "/v1/completions" and line["status"] == 200 for line in api.access_log())


class Probe(threading.Thread):
    """One stream of our own, read event by event, so that one request is surely in flight at the kill."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.first = url, [], threading.Event()
        self.request_id = ""

    def run(self) -> None:
        body = {"prompt": "def f(x):", "max_tokens": 110, "ignore_eos": True, "stream": True, "n": 32}  # ~1.5 s of work idle
        with httpx.stream("POST", f"{self.url}/v1/completions", json=body, timeout=60) as response:
            self.request_id = response.headers["x-request-id"]
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    self.first.set()


class TritonStart(TritonCommand):
    """`slipstream triton start` in the background, as a user runs it, and the tritonserver it runs."""

    def __init__(self, repository: Path, log: Path, ports: Ports | None = None) -> None:
        super().__init__(["--model", TINY, "--model-repository", str(repository)], log, timeout=120, ports=ports)
        [self.tritonserver] = [p for p in psutil.Process(self.process.pid).children() if p.name() == "tritonserver"]
        self.shm_prefix = f"slipstream{self.process.pid}x{self.ports.grpc}_"  # its python stubs' regions (launch.py)

    def leftovers(self) -> list[str]:
        """Processes of tritonserver's group (it and its python stubs) still running, and their shared memory."""
        group = []
        for process in psutil.process_iter(["status"]):
            try:
                if os.getpgid(process.pid) == self.tritonserver.pid and process.info["status"] != psutil.STATUS_ZOMBIE:
                    group.append(f"process {process.pid} {process.name()}")
            except (ProcessLookupError, psutil.Error):
                pass
        return group + [str(p) for p in Path("/dev/shm").glob(f"{self.shm_prefix}*")]

    def clean(self) -> None:
        """What a failed test would leave: its tritonserver's group (stubs included) and their shared memory."""
        try:
            os.killpg(self.tritonserver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)


def test_triton_killed_and_restarted_mid_load_loses_no_request(tiny_repo: Path, tmp_path: Path) -> None:
    first = TritonStart(tiny_repo, tmp_path / "triton-1.log")
    second: TritonStart | None = None
    env = {"SLIPSTREAM_BACKEND": "triton", "SLIPSTREAM_TRITON_URL": json.dumps([first.grpc_url])}
    try:
        with ServerProcess(tiny_repo, [TINY], env=env) as api:
            load = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "slipstream.cli",
                    "eval",
                    "load",
                    "--url",
                    api.url,
                    "--model",
                    TINY,
                    "--clients",
                    "4",
                    "--ramp",
                    "0.5",
                    "--duration",
                    "600",  # ended by SIGINT once the clients are through the restart, however long it took
                    "--prompt-tokens",
                    "16",
                    "--max-tokens",
                    "100",
                    "--out",
                    str(tmp_path),
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for(lambda: completed(api) >= 4 or load.poll() is not None, 60, "the load never got going")
            probe = Probe(api.url)
            probe.start()
            assert probe.first.wait(30), "the probe stream never started"
            first.tritonserver.kill()  # SIGKILL, by its PID: no goodbye to anything in flight
            probe.join(30)
            assert not probe.is_alive(), "a stream in flight when Triton died hung"
            assert probe.events[-1] == "[DONE]", probe.events[-3:]
            assert json.loads(probe.events[-2])["error"]["type"] == "model_unavailable", probe.events[-3:]
            # the operator sees it too: in the server's log and on the request's access-log line, by its id
            assert f"request {probe.request_id}: " in api.log.read_text() and "after its stream started" in api.log.read_text()

            def probe_lines() -> list[dict]:  # written when the server has sent the response's last byte
                return [entry for entry in api.access_log() if entry.get("request_id") == probe.request_id]

            wait_for(lambda: probe_lines() != [], 30, "the probe's request has no access-log line")
            [line] = probe_lines()
            assert line["error"].startswith("model_unavailable: "), line
            down = httpx.post(f"{api.url}/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": True}, timeout=30)
            assert down.status_code == 503 and down.headers["Retry-After"], down.text
            # the command sees its tritonserver gone and ends, leaving no python stub (one caught mid-request
            # can hang on instead of exiting) and no shared memory behind
            assert first.process.wait(timeout=30) == 1 and "tritonserver exited with -9" in first.log.read_text()
            assert first.leftovers() == []
            second = TritonStart(tiny_repo, tmp_path / "triton-2.log", first.ports)  # the same ports: the API finds it again
            api.wait_ready(timeout=30)
            back = completed(api)
            wait_for(lambda: completed(api) >= back + 12 or load.poll() is not None, 120, "no completion after the restart")
            assert load.poll() is None, load.communicate()[1][-3000:]
            load.send_signal(signal.SIGINT)  # Ctrl-C: the requests in flight finish, then the report
            stdout, stderr = load.communicate(timeout=120)
            assert api.process.poll() is None and httpx.get(f"{api.url}/health").status_code == 200
        assert "unhandled error" not in api.log.read_text()
        assert load.returncode == 0 and "PASSED" in stdout, stdout + stderr[-3000:]
        result = json.loads((tmp_path / "load.json").read_text())
        assert result["passed"] and result["lost"] == 0 and result["errors"] >= 1
        errors = [o for o in result["outcomes"] if o["kind"] == "error"]
        for error in errors:  # each one said why: an error event in its stream, or a 503 with its Retry-After
            assert (error["detail"].startswith("HTTP 200: ") and "Triton" in error["detail"]) or (
                error["detail"].startswith("HTTP 503: ") and "(Retry-After: " in error["detail"]
            ), error
        recovered = [o for o in result["outcomes"] if o["started_s"] > max(e["ended_s"] for e in errors)]
        assert recovered and all(o["kind"] == "ok" for o in recovered)
        assert {o["client"] for o in recovered} == {0, 1, 2, 3}  # every client completes again after the restart
        assert second.stop() == 0, second.log.read_text()[-3000:]
        assert second.leftovers() == []  # a clean stop leaves nothing either
    finally:
        for start in (first, second):
            if start is not None:
                start.stop()
                start.clean()


# --- an eval run across a server restart -----------------------------------------------------------


class EvalRun:
    """`slipstream eval humaneval` in the background, its output in a file."""

    def __init__(self, url: str, out: Path, *extra: str) -> None:
        self.out, self.log = out, out.parent / f"{out.name}-{time.monotonic_ns()}.log"
        args = [
            sys.executable,
            "-m",
            "slipstream.cli",
            "eval",
            "humaneval",
            "--url",
            url,
            "--model",
            TINY,
            "--limit",
            str(PROBLEMS),
            "--n",
            str(SAMPLES),
            "--temperatures",
            "0.8",
            "--max-tokens",
            "48",
            "--concurrency",
            "1",
            "--out",
            str(out),
            *extra,
        ]
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(args, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, text=True)

    @property
    def samples(self) -> Path:
        return self.out / TINY / "t0.8" / "samples.jsonl"

    def wait(self) -> tuple[int, str]:
        return self.process.wait(timeout=180), self.log.read_text()


def assert_complete(out: Path) -> None:
    """Every sample exactly once, each executed once, and a pass@k report."""
    folder = out / TINY / "t0.8"
    wanted = sorted((f"HumanEval/{t}", i) for t in range(PROBLEMS) for i in range(SAMPLES))
    assert sorted((s["task_id"], s["sample"]) for s in lines(folder / "samples.jsonl")) == wanted
    assert sorted((r["task_id"], r["sample"]) for r in lines(folder / "results.jsonl")) == wanted
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["problems"] == PROBLEMS and summary["samples_per_problem"] == SAMPLES
    assert list(summary["pass_at_k"]) == ["1"] and 0 <= summary["pass_at_k"]["1"] <= 1
    assert [(r["model"], r["temperature"]) for r in json.loads((out / "report.json").read_text())] == [(TINY, 0.8)]


def test_an_eval_run_rides_through_a_server_restart(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with ServerProcess(tiny_repo, [TINY]) as server:
        run = EvalRun(server.url, out)
        wait_for(lambda: len(lines(run.samples)) >= 4 or run.process.poll() is not None, 60, "no sample came")
        server.stop()  # SIGTERM: the server drains what is in flight and exits; nothing listens until the next one
        at_restart = len(lines(run.samples))
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert run.process.poll() is None and at_restart < PROBLEMS * SAMPLES, "the run was over before the restart"
    with ServerProcess(tiny_repo, [TINY], port=server.port):
        status, log = run.wait()
    assert status == 0, log[-3000:]
    assert "slipstream.client WARNING POST /v1/completions failed" in log and "giving up in" in log, log[-3000:]
    assert "run the same command again" not in log
    assert_complete(out)


def test_an_eval_run_stopped_by_a_server_that_stays_away_resumes(tiny_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with ServerProcess(tiny_repo, [TINY]) as server:
        run = EvalRun(server.url, out, "--retry-window", "2")
        wait_for(lambda: len(lines(run.samples)) >= 4 or run.process.poll() is not None, 60, "no sample came")
        server.process.kill()  # SIGKILL: the request in flight is cut, and nothing comes back within 2 s
        server.process.wait()
        status, log = run.wait()
    assert status == 1, log[-3000:]
    assert "giving up in" in log and "run the same command again to resume" in log, log[-3000:]
    kept = run.samples.read_text().splitlines()
    assert 4 <= len(kept) < PROBLEMS * SAMPLES
    with pytest.raises(httpx.ConnectError), Client(server.url, retry_window=0) as client:
        list(client.stream("def f(x):", max_tokens=8))  # no window: a server that is away fails the request at once
    streamed: list[dict] = []

    def stream_across_the_restart() -> None:
        with Client(server.url, retry_window=60) as client:
            streamed.extend(client.stream("def f(x):", max_tokens=8, ignore_eos=True))

    waiting = threading.Thread(target=stream_across_the_restart, daemon=True)
    waiting.start()  # refused until the server is back, then streamed whole
    time.sleep(0.5)
    assert waiting.is_alive()  # retrying, where a client without a window has failed already
    with ServerProcess(tiny_repo, [TINY], port=server.port) as again:
        status, log = EvalRun(again.url, out, "--retry-window", "2").wait()
        waiting.join(30)
    assert status == 0, log[-3000:]
    assert "".join(c["choices"][0]["text"] for c in streamed if c["choices"]) and streamed[-1]["choices"][0]["finish_reason"]
    assert run.samples.read_text().splitlines()[: len(kept)] == kept  # what the first run wrote, as it wrote it
    assert_complete(out)
