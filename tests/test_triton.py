"""A real tritonserver (the nvidia-pytriton wheel's) serving the tiny CodeGen through server/triton/model.py,
and the API in front of it with --backend triton: the same answers as the embedded backend, streaming,
n > 1, a Triton killed and restarted under the API, nothing left behind."""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from client.api import Client
from server.engine import Prompter
from server.triton.launch import TritonServer, TritonUnavailable
from testkit.triton_process import TritonCommand, start_triton
from tests.conftest import TINY, ServerProcess

PROMPT = "def heappush(heap, item):\n    "


@pytest.fixture(scope="module")
def triton(tiny_repo: Path) -> Iterator[TritonServer]:
    try:
        server = start_triton(tiny_repo, [TINY])
    except TritonUnavailable as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()
    assert server.process is not None and server.process.returncode == 0, server.log_tail()  # SIGTERM, clean exit
    assert server.shm_regions() == []


@pytest.fixture(scope="module")
def api(tiny_repo: Path, triton: TritonServer) -> Iterator[ServerProcess]:
    env = {"SLIPSTREAM_BACKEND": "triton", "SLIPSTREAM_TRITON_URL": json.dumps([triton.grpc_url])}
    with ServerProcess(tiny_repo, [TINY], env=env) as server:
        yield server


def _complete(url: str, **body) -> dict:
    response = httpx.post(f"{url}/v1/completions", json={"prompt": PROMPT, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    "body",
    [
        {"max_tokens": 12, "temperature": 0},
        {"max_tokens": 12, "temperature": 0.9, "seed": 11, "n": 3},
        {"max_tokens": 6, "temperature": 0.7, "seed": 5, "logprobs": 2, "echo": True, "top_p": 0.9, "stop": ["\n\n"]},
    ],
)
def test_triton_backend_answers_as_the_embedded_one(api: ServerProcess, tiny_server: ServerProcess, body: dict) -> None:
    via_triton, embedded = _complete(api.url, **body), _complete(tiny_server.url, **body)
    assert via_triton["choices"] == embedded["choices"]
    assert via_triton["usage"] == embedded["usage"]
    assert len(via_triton["choices"]) == body.get("n", 1)


def test_speculation_and_predictions_run_inside_triton(
    api: ServerProcess, tiny_server: ServerProcess, tiny_repo: Path, triton: TritonServer
) -> None:
    """A speculative request and one with a prediction: the embedded engine's text and usage (its draft
    counts included) through Triton, the drafts counted on Triton's own /metrics."""
    prompter = Prompter(tiny_repo, TINY)
    likely = {str(prompter.encode(w)[-1]): 10 for w in (" 2", " 3")}  # a random model made to repeat, as code does
    body = {
        "prompt": "x = [1, 2, 3]\ny = [1, 2, 3]\nz = [1, 2",
        "max_tokens": 24,
        "temperature": 0,
        "ignore_eos": True,
        "logit_bias": likely,
        "cache_prompt": False,  # each server's usage alike, whatever it served before
    }
    plain = _complete(api.url, **body)["choices"][0]["text"]
    for more in ({"speculative": True}, {"prediction": {"type": "content", "content": plain}}):
        via_triton, embedded = _complete(api.url, **body, **more), _complete(tiny_server.url, **body, **more)
        assert via_triton["choices"][0]["text"] == embedded["choices"][0]["text"]
        assert via_triton["usage"] == embedded["usage"]
        assert via_triton["usage"]["completion_tokens_details"]["accepted_draft_tokens"] > 0, via_triton["usage"]
    # the model moves its counters onto Triton's twice a second: wait for the next report, bounded
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = httpx.get(triton.metrics_url, timeout=10).text.splitlines()
        if sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("slipstream_accepted_draft_tokens{")) > 0:
            break
        time.sleep(0.25)
    else:
        raise AssertionError("no accepted draft tokens on Triton's /metrics after 10 s")


def test_streaming_through_triton_arrives_token_by_token(api: ServerProcess) -> None:
    body = {
        "prompt": PROMPT,
        "max_tokens": 16,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = []
    with httpx.stream("POST", f"{api.url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[6:]))
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert chunks[-1]["usage"]["completion_tokens"] == 16
    assert len(texts) >= 8  # about one chunk per token, not one at the end
    assert "".join(texts) == _complete(api.url, max_tokens=16, temperature=0, ignore_eos=True)["choices"][0]["text"]


def _triton_decoded_rows(triton: TritonServer) -> float:
    """Our engine's rows decoded inside Triton, from Triton's own metrics (the model reports them)."""
    lines = httpx.get(triton.metrics_url, timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("slipstream_decoded_rows{"))


def test_clients_that_leave_mid_stream_end_their_triton_requests(api: ServerProcess, triton: TritonServer) -> None:
    """Streams dropped after two chunks are cancelled in Triton (their rows stop decoding: Triton's metrics
    count the rows our engine decoded, far fewer than the dropped streams asked for; their requests end, so
    Triton can still stop cleanly: the fixture checks its exit status) while the other streams finish whole."""
    import asyncio

    whole = {"max_tokens": 24, "ignore_eos": True, "temperature": 0.8, "stream_options": {"include_usage": True}}
    # seconds of work each (16 rows x 99 steps with top-5 logprobs), if not cancelled
    dropped = {"max_tokens": 100, "n": 16, "ignore_eos": True, "temperature": 0.8, "logprobs": 5}

    async def one(index: int) -> int:
        body = {"prompt": PROMPT, **(dropped if index % 2 == 0 else whole), "stream": True, "seed": index}
        async with httpx.AsyncClient(timeout=60) as client:
            async with client.stream("POST", f"{api.url}/v1/completions", json=body) as response:
                chunks, generated = 0, 0
                async for line in response.aiter_lines():
                    chunks += line.startswith("data: ")
                    if index % 2 == 0 and chunks == 2:
                        return -1
                    if line.startswith("data: {") and (usage := json.loads(line[6:]).get("usage")):
                        generated = usage["completion_tokens"]
                return generated

    async def everyone() -> list[int]:
        return await asyncio.gather(*(one(i) for i in range(8)))

    before = _triton_decoded_rows(triton)
    results = asyncio.run(everyone())
    assert results.count(-1) == 4 and all(r == 24 for r in results if r != -1)  # the others whole
    assert _complete(api.url, max_tokens=4)["usage"]["completion_tokens"] == 4
    time.sleep(1.5)  # the model reports its count twice a second
    decoded = _triton_decoded_rows(triton) - before
    assert 0 < decoded < 4 * 16 * 99 / 2, f"{decoded:.0f} rows decoded: the dropped streams ran on in Triton"
    assert triton.ready()


def test_a_malformed_triton_request_gets_an_error_event(triton: TritonServer) -> None:
    import tritonclient.grpc as grpc

    events: queue.Queue = queue.Queue()
    client = grpc.InferenceServerClient(triton.grpc_url)
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    try:
        inputs = []
        for name, value in (("prompt", '{"ids": [1, 2], "text": "x"}'), ("sampling_parameters", '{"temprature": 1}')):
            tensor = grpc.InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
            inputs.append(tensor)
        client.async_stream_infer(TINY, inputs)
        result, error = events.get(timeout=30)
    finally:
        client.stop_stream()
        client.close()
    assert error is None
    event = json.loads(result.as_numpy("event")[0])
    assert event["error"]["type"] == "invalid_input" and "temprature" in event["error"]["message"]


def test_triton_metrics_and_health_are_reachable(triton: TritonServer) -> None:
    assert httpx.get(f"{triton.http_url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{triton.http_url}/v2/models/{TINY}/ready").status_code == 200
    assert "nv_inference_request_success" in httpx.get(triton.metrics_url).text


def test_triton_killed_gives_503_and_the_api_recovers_when_it_returns(tiny_repo: Path) -> None:
    first = start_triton(tiny_repo, [TINY])
    env = {"SLIPSTREAM_BACKEND": "triton", "SLIPSTREAM_TRITON_URL": json.dumps([first.grpc_url])}
    second = None
    try:
        with ServerProcess(tiny_repo, [TINY], env=env) as api:
            assert _complete(api.url, max_tokens=4)["usage"]["completion_tokens"] >= 1
            first.process.kill()  # type: ignore[union-attr]
            first.process.wait()  # type: ignore[union-attr]
            for stream in (False, True):
                down = httpx.post(f"{api.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4, "stream": stream})
                assert down.status_code == 503, down.text
                assert down.json()["error"]["type"] == "model_unavailable"
                assert down.headers["Retry-After"]
            assert httpx.get(f"{api.url}/ready").status_code == 503
            second = TritonServer(tiny_repo, [TINY], first.ports).start(timeout=120)  # where the API expects it
            api.wait_ready(timeout=30)  # the health check sees it again within a second or two
            assert _complete(api.url, max_tokens=4)["usage"]["completion_tokens"] >= 1
    finally:
        first.stop()
        if second is not None:
            second.stop()
    for server in (first, second):
        assert server is not None and server.shm_regions() == []


@pytest.mark.bundled
def test_smollm2_int8_through_triton_streams_to_the_openai_client(bundled_repo: Path, tmp_path: Path) -> None:
    """The issue's end to end: `slipstream triton start` + `slipstream serve --backend triton` serve the
    bundled SmolLM2 INT8 to the official client, streaming, with the embedded backend's greedy text."""
    import openai

    start = TritonCommand(["--model", "smollm2-135m", "--model-repository", str(bundled_repo)], tmp_path / "triton-start.log")
    try:
        env = {"SLIPSTREAM_BACKEND": "triton", "SLIPSTREAM_TRITON_URL": json.dumps([start.grpc_url])}
        with ServerProcess(bundled_repo, ["smollm2-135m"], env=env) as api, ServerProcess(bundled_repo, ["smollm2-135m"]) as embedded:
            client = openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0, timeout=120)
            params = dict(model="smollm2-135m", prompt="def fibonacci(n):", max_tokens=24, temperature=0)
            pieces = [c.choices[0].text for c in client.completions.create(**params, stream=True) if c.choices]
            assert len(pieces) > 5
            reference = openai.OpenAI(base_url=f"{embedded.url}/v1", api_key="unused", max_retries=0, timeout=120)
            assert "".join(pieces) == reference.completions.create(**params).choices[0].text
    finally:
        ended = start.stop()  # the command stops its tritonserver on SIGTERM
    assert ended == 0, start.output()[-3000:]  # after the body's own assertions, which a failure here would hide


def test_triton_start_hands_the_engine_settings_to_the_model(tiny_repo: Path, tmp_path: Path) -> None:
    """`slipstream triton start --max-queue 1` (the settings' own flag) reaches the scheduler inside
    Triton: while one long request streams through the API, the next is refused with a 429. Tried up to
    five times: Triton's python backend may take the next request only once the model has sent the long
    one's last response (one per event), and a 429 in any try proves the limit is there; without it no
    try can ever get one."""
    # work for a second or two (64 rows x 109 steps with top-5 logprobs): still decoding when the next arrives
    long_run = {"prompt": PROMPT, "max_tokens": 110, "n": 64, "temperature": 1.0, "ignore_eos": True, "logprobs": 5}
    with TritonCommand(
        ["--model", TINY, "--model-repository", str(tiny_repo), "--max-queue", "1"], tmp_path / "triton-start.log"
    ) as triton:
        env = {"SLIPSTREAM_BACKEND": "triton", "SLIPSTREAM_TRITON_URL": json.dumps([triton.grpc_url]), "SLIPSTREAM_MAX_N": "64"}
        with ServerProcess(tiny_repo, [TINY], env=env) as api:
            answers = []
            for _ in range(5):
                with httpx.stream("POST", f"{api.url}/v1/completions", json=long_run | {"stream": True}, timeout=60) as first:
                    lines = first.iter_lines()
                    assert first.status_code == 200 and '"choices"' in next(lines)  # decoding in Triton now
                    answers.append(httpx.post(f"{api.url}/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=60))
                if answers[-1].status_code == 429:
                    break
            refused = answers[-1]
            assert refused.status_code == 429 and "max_queue" in refused.json()["error"]["message"], [a.status_code for a in answers]
            with Client(api.url, max_retries=30) as client:  # the first is cancelled: room again, after a Retry-After
                assert client.complete(PROMPT, max_tokens=4)["usage"]["completion_tokens"] == 4


def test_a_taken_port_is_named_and_other_ports_are_tried(tiny_repo: Path, tmp_path: Path) -> None:
    """tritonserver goes on without its metrics service when that port is taken: start() says which port
    instead of handing out a server whose metrics are another process's; the tests' helper tries others."""
    import socket

    from server.triton.launch import Ports, PortTaken
    from testkit.triton_process import free_ports

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        for field in ("grpc", "metrics"):
            ports = Ports(**{**free_ports().__dict__, field: taken})
            with pytest.raises(PortTaken, match=f"port {taken} on 127.0.0.1 is taken"):
                TritonServer(tiny_repo, [TINY], ports).start(timeout=120)


def test_the_tests_triton_command_tries_other_ports_when_one_is_taken(
    tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """testkit's TritonCommand, which the Triton tests start through: its first ports have the gRPC one
    held by another socket; `slipstream triton start` says so and exits, and it starts again on others."""
    import dataclasses
    import socket

    import testkit.triton_process as triton_process

    drawn = []

    def first_one_taken():
        ports = real()
        drawn.append(ports)
        return dataclasses.replace(ports, grpc=holder.getsockname()[1]) if len(drawn) == 1 else ports

    real = triton_process.free_ports
    monkeypatch.setattr(triton_process, "free_ports", first_one_taken)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with TritonCommand(["--model", TINY, "--model-repository", str(tiny_repo)], tmp_path / "start.log") as triton:
            assert len(drawn) == 2 and triton.ports == drawn[1]
            assert httpx.get(f"http://127.0.0.1:{triton.ports.http}/v2/health/ready").status_code == 200
    assert triton.process.returncode == 0
