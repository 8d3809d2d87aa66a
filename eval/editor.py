"""`slipstream eval editor`: editor sessions replayed against OpenAI-compatible servers.

What an editor sends (shared/reference/editor-traffic.md): a streaming completion at each pause in
typing, the prompt being the file up to the cursor, and the request in flight cancelled when the next
keystroke comes. The sessions (eval/editor_sessions.py) retype stretches of real source files word by
word; at each word a streaming /v1/completions request goes out (greedy, `max_tokens`, stop at a blank
line, `stream_options.include_usage` so that a server that reports
`usage.prompt_tokens_details.cached_tokens` says how much of the prompt it reused).

Typing speed: with `word_ms` 0 each request is awaited to its end before the next word (one at a time:
nothing is cancelled, every request measures a whole completion); with `word_ms` > 0 the next word
comes that many milliseconds after the last one whatever the server is doing, and a request still
streaming then is cancelled by closing its stream, as Copilot does.

Each server replays every session twice: "cold" (its first pass: for a server just started, nothing
cached) and "warm" (the same sessions again). Every request ends one way: completed (its stream ended
with a finish_reason), cancelled (we closed it), error (the server said why) or lost (anything else).
Servers are replayed one after another, never at once, so that none measures another's load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from client.api import APIError, AsyncClient, Timing
from eval import editor_report
from eval.editor_sessions import Request, Session, build, default_files, read_files

PASSES = ("cold", "warm")


def say(line: str) -> None:
    """A progress line, out at once (a pipe would otherwise hold it until the run ends)."""
    print(line, flush=True)


class EditorError(Exception):
    """A replay that cannot run: a server not there, no file to type."""


@dataclass(frozen=True)
class Target:
    name: str  # the label of the server in the report
    url: str
    model: str | None = None  # None: the first model the server lists


@dataclass(frozen=True)
class ReplayConfig:
    sessions: int = 1  # per file
    words: int = 62  # per session: one request each
    prompt_chars: int = 5000  # about 1.4k tokens of code (~3.5 characters a token)
    max_tokens: int = 24
    word_ms: float = 0.0  # 0: each completion awaited; > 0: the next word after this long, cancelling
    stop: str = "\n\n"
    timeout_s: float = 300.0


@dataclass
class ServerReplay:
    target: Target
    model: str
    requests: list[Request] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)  # per pass

    def entry(self) -> dict:
        """The server's part of the report: its summary per pass (editor_report.summarise) and every request."""
        return {
            "name": self.target.name,
            "url": self.target.url,
            "model": self.model,
            "wall_s": self.wall_s,
            "passes": {phase: editor_report.summarise([r for r in self.requests if r.phase == phase]) for phase in PASSES},
            "requests": [asdict(r) for r in self.requests],
        }


async def _resolve_model(client: AsyncClient, target: Target) -> str:
    try:
        models = await client.models()
    except (httpx.HTTPError, OSError) as exc:
        raise EditorError(f"{target.name}: no server answers at {target.url} ({type(exc).__name__}: {exc})") from exc
    except APIError as exc:
        raise EditorError(f"{target.name}: {target.url}/v1/models failed: {exc}") from exc
    names = [str(m["id"]) for m in models if m.get("id")]
    if target.model is None:
        if not names:
            raise EditorError(f"{target.name}: {target.url} lists no model; name one with --model")
        return names[0]
    return target.model


async def check(targets: list[Target], timeout_s: float = 30.0) -> list[str]:
    """Each target's model, or an EditorError naming the first server that does not answer."""
    models = []
    for target in targets:
        async with AsyncClient(target.url, timeout=timeout_s, max_retries=0) as client:
            models.append(await _resolve_model(client, target))
    return models


async def _finish(task: asyncio.Task, timing: Timing, record: Request, sent: float, cancel: bool) -> Request:
    """The request's record once its task has ended or, with `cancel`, once it has been cancelled
    (cancelling the task closes its stream: the server sees the client go)."""
    if cancel and not task.done():
        task.cancel()
    await asyncio.wait({task})
    record.total_s = time.perf_counter() - sent
    failure = None if task.cancelled() else task.exception()
    if task.cancelled():
        record.outcome = "cancelled"
    elif isinstance(failure, APIError):
        record.outcome, record.detail = "error", str(failure)
    elif isinstance(failure, (httpx.HTTPError, OSError, ValueError)):  # dropped, cut, garbled: nobody said why
        record.outcome, record.detail = "lost", f"{type(failure).__name__}: {failure}"
    elif failure is not None:
        raise failure
    elif timing.finish_reason is None:
        record.outcome, record.detail = "lost", "the stream ended without a finish_reason"
    else:
        record.outcome = "completed"
    record.ttft_s, record.text, record.finish_reason = timing.ttft_s, timing.text, timing.finish_reason
    record.prompt_tokens, record.cached_tokens = timing.prompt_tokens, timing.cached_tokens
    record.completion_tokens = timing.completion_tokens
    return record


async def _session(
    client: AsyncClient, server: str, model: str, phase: str, session: Session, text: str, config: ReplayConfig, t0: float
) -> list[Request]:
    params = {"model": model, "max_tokens": config.max_tokens, "temperature": 0, "stop": [config.stop]}
    records: list[Request] = []
    prompts = session.prompts(text)
    next_word = time.perf_counter()
    for word, prompt in enumerate(prompts):
        sent = time.perf_counter()
        timing = Timing(ttft_s=None, total_s=0.0)
        record = Request(server, phase, session.file, session.index, word, len(prompt), sent - t0, "pending", 0.0)
        task = asyncio.create_task(client.timed(prompt, timing=timing, **params))
        last = word == len(prompts) - 1
        if config.word_ms > 0 and not last:
            next_word += config.word_ms / 1000
            # the next keystroke comes on the typist's clock, whatever the server is doing
            await asyncio.wait({task}, timeout=max(0.0, next_word - time.perf_counter()))
        records.append(await _finish(task, timing, record, sent, cancel=config.word_ms > 0 and not last))
        if config.word_ms > 0 and not last:
            await asyncio.sleep(max(0.0, next_word - time.perf_counter()))
    return records


async def replay_server(
    target: Target, sessions: list[Session], texts: dict[str, str], config: ReplayConfig, log: Callable[[str], None] = say
) -> ServerReplay:
    """Both passes of every session against one server; a progress line per session."""
    async with AsyncClient(target.url, timeout=config.timeout_s, max_retries=0) as client:
        replay = ServerReplay(target, await _resolve_model(client, target))
        for phase in PASSES:
            t0 = time.perf_counter()
            for session in sessions:
                records = await _session(client, target.name, replay.model, phase, session, texts[session.file], config, t0)
                replay.requests += records
                log(f"[{target.name}] {phase} {Path(session.file).name} #{session.index}: " + editor_report.progress(records))
            replay.wall_s[phase] = time.perf_counter() - t0
    return replay


def prepare(files: list[Path] | None, config: ReplayConfig, log: Callable[[str], None] = say) -> tuple[dict[str, str], list[Session]]:
    """The files' texts and the sessions over them; the default files where none are given."""
    texts = read_files(files if files else default_files(), log)
    sessions = build(texts, config.sessions, config.words, config.prompt_chars)
    if not sessions:
        raise EditorError("no session to replay: none of the files could be read, or all are empty")
    log(f"{len(sessions)} sessions over {len(texts)} files, {sum(len(s.cursors) for s in sessions)} requests per pass")
    return texts, sessions


def run(targets: list[Target], files: list[Path] | None, config: ReplayConfig, out: Path, log: Callable[[str], None] = say) -> dict:
    """`eval editor`: every target in turn, then editor.{json,md,png} under `out`."""
    if not targets:
        raise EditorError("name at least one server (--url)")
    texts, sessions = prepare(files, config, log)
    asyncio.run(check(targets))  # every server answers before any is timed
    entries = [asyncio.run(replay_server(t, sessions, texts, config, log)).entry() for t in targets]
    result = editor_report.result([{"label": "", "servers": entries}], config=asdict(config), sessions=sessions)
    editor_report.write(out, result)
    return result
