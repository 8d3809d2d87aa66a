"""A language-server client over stdio, as an editor is one: JSON-RPC 2.0 in Content-Length frames,
requests answered by id, the server's own requests to the editor answered (configuration,
progress, registrations), its notifications kept. For driving a real plugin's language server (the
Copilot agent) against a real `slipstream serve` in the tests."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any]], Any]


class LanguageServer:
    """A language server child process (its stderr in `log`), stopped by its own PID."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        handlers: dict[str, Handler] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.log = log
        self._sink = log.open("w")
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._sink, env={**os.environ, **(env or {})}, cwd=cwd
        )
        self._next_id = 0
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.notifications: list[dict[str, Any]] = []
        self.requests_seen: list[dict[str, Any]] = []  # what the server asked of the editor
        self._handlers = handlers or {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def request(self, method: str, params: Any, timeout: float = 60.0) -> Any:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            future: Future[Any] = Future()
            self._pending[ident] = future
        self._send({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        return future.result(timeout=timeout)

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode()
        assert self.process.stdin is not None
        with self._write_lock:
            self.process.stdin.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
            self.process.stdin.flush()

    def _read(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        while True:
            length = None
            while True:  # the header block, up to its empty line
                line = stream.readline()
                if not line:
                    return self._fail_pending(RuntimeError(f"language server exited:\n{self.tail()}"))
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length is None:
                continue
            self._dispatch(json.loads(stream.read(length)))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" not in message:  # a response to one of ours
            future = self._pending.pop(message.get("id"), None)
            if future is not None:
                if "error" in message:
                    future.set_exception(RuntimeError(f"{message['error']}"))
                else:
                    future.set_result(message.get("result"))
            return
        if "id" not in message:
            self.notifications.append(message)
            return
        self.requests_seen.append(message)
        handler = self._handlers.get(message["method"])
        result = handler(message.get("params") or {}) if handler else None
        if message["method"] == "workspace/configuration" and handler is None:
            result = [None for _ in (message.get("params") or {}).get("items", [])]
        self._send({"jsonrpc": "2.0", "id": message["id"], "result": result})

    def _fail_pending(self, error: Exception) -> None:
        with self._lock:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(error)
            self._pending.clear()

    def tail(self, chars: int = 4000) -> str:
        self._sink.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.request("shutdown", None, timeout=5)
                self.notify("exit", None)
                self.process.wait(timeout=5)
            except Exception:  # noqa: BLE001 - a server that will not shut down is killed, by its PID
                self.process.kill()
                self.process.wait()
        self._sink.close()

    def __enter__(self) -> LanguageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
