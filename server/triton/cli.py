"""`slipstream triton start`: a real tritonserver on this machine serving model_repository/, in the
foreground until Ctrl-C (or SIGTERM), for `slipstream serve --backend triton` to stand in front of.

Its model and engine flags are the settings' own (server/cli.py add_settings_flags); the engine
settings reach the model inside Triton as SLIPSTREAM_* variables. Only the ports and the start-up
wait are Triton's."""

from __future__ import annotations

import argparse
import signal
import threading

from server.cli import add_settings_flags, settings_from
from server.settings import ENGINE_SETTINGS

_FLAGS = ("model", "model_repository", *ENGINE_SETTINGS)


def add_triton_commands(commands: argparse._SubParsersAction) -> None:
    triton = commands.add_parser("triton", help="run Triton Inference Server on the model repository")
    actions = triton.add_subparsers(dest="triton_command", required=True)
    start = actions.add_parser("start", help="start tritonserver (from the nvidia-pytriton wheel) on 127.0.0.1")
    add_settings_flags(start, only=_FLAGS)
    start.add_argument("--http-port", type=int, default=8000)
    start.add_argument("--grpc-port", type=int, default=8001)
    start.add_argument("--metrics-port", type=int, default=8002)
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the models to be ready")
    start.set_defaults(run=_start)


def _start(args: argparse.Namespace) -> int:
    from server.models import store, triton_config
    from server.triton.launch import Ports, TritonServer, TritonUnavailable

    settings = settings_from(args)
    repository, models = settings.model_repository, list(dict.fromkeys(settings.model))
    for name in models:
        try:
            manifest = store.read_manifest(repository, name)
        except store.ModelNotExported as exc:
            raise SystemExit(f"error: {exc}") from None
        triton_config.ensure(repository, manifest)
    server = TritonServer(repository, models, Ports(args.http_port, args.grpc_port, args.metrics_port), env=settings.environment())
    try:
        server.start(timeout=args.timeout)
    except TritonUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"tritonserver ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}; "
        f"models {', '.join(models)}; log {server.log}",
        flush=True,
    )
    print(
        f"put the API in front: slipstream serve --backend triton --triton-url {server.grpc_url}"
        + "".join(f" --model {m}" for m in models),
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if server.process is not None and server.process.poll() is not None:
            print(f"tritonserver exited with {server.process.returncode}:\n{server.log_tail()}", flush=True)
            server.stop()  # its python stubs can outlive it (one caught mid-request hangs), holding their shared memory
            return 1
    server.stop()
    return 0
