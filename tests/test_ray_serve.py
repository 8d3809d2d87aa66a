"""Ray Serve, for real: `slipstream serve --ray local` starts a one-machine cluster with two engine
replicas of a tiny Llama behind our API as the ingress. Editor sessions of several users keep to the
replica holding their prefix (Serve's own power-of-two router, in the same test, does not); two keys'
identical prompts share nothing; a replica SIGKILLed while six clients stream loses no request (the
same greedy text as without the kill) and Serve replaces it; a replica that cannot load its model is
never routed to and /ready says why, while the other serves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server.engine import Prompt
from server.rayserve.router import block_hashes
from testkit.server_process import ROOT, ServerProcess
from tests.conftest import TINY_LLAMA

pytestmark = pytest.mark.timeout(420)  # a cluster up and down is about 15 s; Ray's processes must not hang CI

KEYS = [f"editor-key-{user}" for user in range(6)]


@pytest.fixture(scope="module")
def long_repo(long_llama_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of its own: the last test breaks the model on disk."""
    repository = tmp_path_factory.mktemp("ray_repository")
    shutil.copytree(long_llama_repo / TINY_LLAMA, repository / TINY_LLAMA)
    return repository


def on_ray(repository: Path, router: str) -> ServerProcess:
    flags = ["--ray", "local", "--ray-replicas", "2", "--ray-router", router]
    return ServerProcess(repository, [TINY_LLAMA], env={"SLIPSTREAM_API_KEYS": ",".join(KEYS)}, threads=1, flags=flags)


@pytest.fixture(scope="module")
def ray_server(long_repo: Path) -> Iterator[ServerProcess]:
    with on_ray(long_repo, "prefix") as server:
        yield server


def complete(server: ServerProcess, key: str, prompt: str, **fields: object) -> dict:
    body = {"model": TINY_LLAMA, "prompt": prompt, "max_tokens": 4, "temperature": 0, **fields}
    response = httpx.post(f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def session_prompts(user: int, requests: int) -> list[str]:
    """An editor session: the file up to the cursor, a few characters longer each time."""
    lines = [f"def handler_{user}_{i}(request, limit={i * user + 3}):\n    return request.items[:limit]\n" for i in range(12)]
    text = f"# module {user}\n" + "".join(lines)
    start = 240 + 7 * user
    return [text[: start + 40 * step] for step in range(requests)]  # each a few of the reuse grid's tiles on


def replay(server: ServerProcess, requests: int = 10) -> list[tuple[int, int, int]]:
    """Every user's session, interleaved: (user, cached tokens, prompt tokens) per request, in order."""
    sessions = [session_prompts(user, requests) for user in range(len(KEYS))]
    out = []
    for step in range(requests):
        for user, prompts in enumerate(sessions):
            usage = complete(server, KEYS[user], prompts[step])["usage"]
            out.append((user, usage["prompt_tokens_details"]["cached_tokens"], usage["prompt_tokens"]))
    return out


def follow_ups_at_home(run: list[tuple[int, int, int]], ideal: list[tuple[int, int, int]]) -> float:
    """The share of follow-up requests that reused as much as on one replica holding everything: those
    that reached the replica holding their prefix."""
    users = len(KEYS)
    pairs = list(zip(run[users:], ideal[users:], strict=True))
    return sum(got[1] == want[1] for got, want in pairs) / len(pairs)


def reused_share(run: list[tuple[int, int, int]]) -> float:
    return sum(r[1] for r in run) / sum(r[2] for r in run)


def test_block_hashes_follow_the_tokens_under_one_salt_only() -> None:
    ids = list(range(40))
    one = block_hashes(Prompt(ids=ids, text="", cache_salt="a"), 16)
    assert len(one) == 2  # whole blocks only
    assert block_hashes(Prompt(ids=ids + [7, 8], text="", cache_salt="a"), 16) == one  # a longer prompt extends the chain
    assert block_hashes(Prompt(ids=[99] + ids[1:], text="", cache_salt="a"), 16)[1] != one[1]  # the chain carries earlier blocks
    assert not set(block_hashes(Prompt(ids=ids, text="", cache_salt="b"), 16)) & set(one)  # another key shares none


def test_editor_sessions_keep_to_the_replica_holding_their_prefix(long_repo: Path, ray_server: ServerProcess) -> None:
    with ServerProcess(long_repo, [TINY_LLAMA], env={"SLIPSTREAM_API_KEYS": ",".join(KEYS)}, threads=1) as alone:
        ideal = replay(alone)  # one engine holding every session: what each request can reuse at best
    prefix = replay(ray_server)
    with on_ray(long_repo, "power_of_two") as server:
        power_of_two = replay(server)
        routed = replica_requests(server)
    at_home, baseline = follow_ups_at_home(prefix, ideal), follow_ups_at_home(power_of_two, ideal)
    print(f"follow-ups at their prefix's replica: prefix router {at_home:.0%}, power of two {baseline:.0%}")
    shares = [f"{reused_share(run):.1%}" for run in (ideal, prefix, power_of_two)]
    print("prompt tokens reused: one replica {}, prefix router {}, power of two {}".format(*shares))
    assert at_home >= 0.9
    assert baseline <= at_home - 0.1 and len(routed) == 2  # Serve's router spreads the sessions over both, losing prefixes
    assert reused_share(prefix) >= reused_share(ideal) - 0.05
    assert len(replica_requests(ray_server)) == 2  # the prefix router used both replicas too


def test_two_keys_identical_prompts_share_nothing(ray_server: ServerProcess) -> None:
    prompt = "class Isolation:\n    def keep(self, secret):\n        return secret * 2  # " + "x" * 60
    assert complete(ray_server, KEYS[0], prompt)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert complete(ray_server, KEYS[1], prompt)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert complete(ray_server, KEYS[0], prompt)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    # the ingress writes the access log (Ray forwards its stdout with the replica's name before each line)
    logged = [
        json.loads(line[line.index("{") :]) for line in ray_server.log.read_text().splitlines() if '"route": "/v1/completions"' in line
    ]
    assert logged and all(entry["status"] == 200 and entry["model"] == TINY_LLAMA for entry in logged)


# --- failover ---


def replica_requests(server: ServerProcess) -> dict[int, int]:
    """Requests each engine replica took, by its pid, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=10).text
    found = re.findall(r'slipstream_replica_requests_total\{replica="\S+ \(pid (\d+)\)"\} (\S+)', text)
    return {int(pid): int(float(n)) for pid, n in found}


def stream(server: ServerProcess, key: str, prompt: str, n: int, got: dict, chunks: threading.Semaphore) -> None:
    body = {"model": TINY_LLAMA, "prompt": prompt, "max_tokens": 700, "temperature": 0, "ignore_eos": True, "stream": True, "n": n}
    texts, finish = [""] * n, [None] * n
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120) as r:
        status = r.status_code
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            assert "error" not in event, event
            for choice in event["choices"]:
                texts[choice["index"]] += choice["text"]
                finish[choice["index"]] = choice["finish_reason"] or finish[choice["index"]]
            chunks.release()
    got[key] = (status, texts, finish)


def six_streams(server: ServerProcess, kill: bool) -> tuple[dict, int | None]:
    got: dict = {}
    chunks = threading.Semaphore(0)
    before = replica_requests(server)
    # the first client asks for two choices: each is resumed on its own, the two streams merged into one
    clients = [
        threading.Thread(target=stream, args=(server, key, f"# {key}\ndef work_{i}(items):\n", 2 if i == 0 else 1, got, chunks))
        for i, key in enumerate(KEYS)
    ]
    for client in clients:
        client.start()
    killed = None
    if kill:
        for _ in range(6 * 3):  # every stream well under way
            assert chunks.acquire(timeout=60)
        busiest = max((pid for pid in replica_requests(server)), key=lambda pid: replica_requests(server)[pid] - before.get(pid, 0))
        os.kill(busiest, signal.SIGKILL)  # a process this test's server started (a Ray worker of its cluster)
        killed, got["killed at"] = busiest, time.monotonic()
    for client in clients:
        client.join(timeout=120)
    return got, killed


def test_a_replica_killed_mid_stream_loses_no_request_and_is_replaced(ray_server: ServerProcess) -> None:
    calm, _ = six_streams(ray_server, kill=False)
    stormy, killed = six_streams(ray_server, kill=True)
    assert killed is not None
    for key in KEYS:
        assert stormy[key][0] == 200
        assert stormy[key][1] == calm[key][1], key  # greedy: the same text as without the kill
        assert stormy[key][2] == ["length"] * len(calm[key][2])
    metrics = httpx.get(f"{ray_server.url}/metrics", headers={"Authorization": f"Bearer {KEYS[0]}"}, timeout=10).text
    assert float(re.search(r"^slipstream_failovers_total (\S+)$", metrics, re.M).group(1)) >= 1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # Serve replaces the dead replica
        states = httpx.get(f"{ray_server.url}/ready", timeout=10).json()["replicas"]["states"]
        if states.get("RUNNING") == 2:
            break
        time.sleep(0.2)
    assert states.get("RUNNING") == 2, states
    deadline, user = time.monotonic() + 30, 0
    while len(replica_requests(ray_server)) < 3 and time.monotonic() < deadline:  # the new replica takes requests
        complete(ray_server, KEYS[user % len(KEYS)], f"print({user})\n" * 3)
        user += 1
    pids = set(replica_requests(ray_server))
    assert killed in pids and len(pids) == 3
    print(f"a new replica served {time.monotonic() - stormy['killed at']:.1f} s after the kill")


def test_a_replica_that_cannot_load_is_never_routed_to_and_ready_says_why(ray_server: ServerProcess, long_repo: Path) -> None:
    """Run last: it breaks the model on disk, as a node's bad disk would, and kills a replica."""
    graph = next((long_repo / TINY_LLAMA / "1").glob("*.onnx"))
    graph.write_bytes(b"not a graph")
    alive = replica_requests(ray_server)
    victim = max(alive)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = httpx.get(f"{ray_server.url}/ready", timeout=10).json()
        if "cannot load" in body["replicas"]["message"]:
            break
        time.sleep(0.5)
    assert "cannot load" in body["replicas"]["message"], body
    assert body["replicas"]["states"].get("RUNNING") == 1
    for user in range(6):  # the other replica serves every request meanwhile
        complete(ray_server, KEYS[user], f"x = {user}\n" * 3)


def test_ray_pointing_at_no_cluster_fails_within_seconds(long_repo: Path) -> None:
    started = time.monotonic()
    args = [sys.executable, "-m", "slipstream.cli", "serve", "--ray", "127.0.0.1:9", "--model", TINY_LLAMA]
    done = subprocess.run(args + ["--model-repository", str(long_repo)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "no Ray cluster answers at 127.0.0.1:9" in done.stderr
    assert time.monotonic() - started < 20
    assert (Path(sys.executable).parent / "ray").exists()  # `ray start --head`, which the error points to, is installed


def test_local_replicas_that_would_not_fit_the_cores_share_them() -> None:
    from server.rayserve.app import engine_settings
    from server.rayserve.launch import fit_to_this_machine
    from server.settings import Settings

    cores = os.cpu_count() or 1
    crowded = fit_to_this_machine(Settings(ray="local", ray_replicas=4 * cores, ray_replica_cpus=1))
    assert crowded.ray_replica_cpus == 0.25  # a quarter of a core each: all start, none waits for CPUs forever
    assert engine_settings(crowded).threads == 1
    roomy = Settings(ray="local", ray_replicas=1, ray_replica_cpus=cores)
    assert fit_to_this_machine(roomy) == roomy
    assert engine_settings(roomy).threads == cores
