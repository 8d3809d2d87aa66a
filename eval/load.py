"""`slipstream eval load`: a bounded load test of a completion server over loopback.

Clients join one by one over --ramp seconds up to --clients, each sending streaming completions one
after another until --duration has passed since the start; the requests in flight at the end are
finished (a test that cut them would lose them itself). Every request ends in one of three ways:
- ok: its stream ended with a finish_reason (a full completion);
- error: the server said why (an HTTP error with its error object, or an error event in the stream);
- lost: anything else (connection dropped, a stream that stopped without a finish_reason, a timeout).
The run passes only with no lost request. Reported: aggregate completion tokens/s, request latency,
TTFT and inter-token latency at p50/p95/p99, error rate, and a per-second timeline (clients active,
requests ended, tokens) with its plot. Ctrl-C (or SIGTERM) ends it early: the requests in flight finish
and the report is written for the time run. No retries: a 429 or 503 is an error to count, not to hide; its
client waits for the Retry-After it was given before its next request (rather than asking again at once,
which would only measure how fast the server can refuse).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from client.api import APIError, AsyncClient
from eval.html_page import write_study
from eval.latency import corpus, prompt_for
from eval.load_generator import ClosedLoop
from eval.stats import percentiles


@dataclass(frozen=True)
class LoadConfig:
    url: str
    model: str | None
    clients: int = 32
    duration_s: float = 60.0
    ramp_s: float = 10.0
    prompt_tokens: int = 128
    max_tokens: int = 64
    temperature: float = 0.8
    timeout_s: float = 300.0


@dataclass
class Outcome:
    client: int
    started_s: float  # since the test's start
    ended_s: float
    kind: str  # ok | error | lost
    detail: str | None = None
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    completion_tokens: int = 0


async def _request(
    client_index: int, ticket: int, config: LoadConfig, client: AsyncClient, text: str, t0: float, outcomes: list[Outcome]
) -> None:
    """One streaming completion, its outcome counted; after a 429/503 with Retry-After this client's next
    request waits for it."""
    params: dict[str, Any] = {"max_tokens": config.max_tokens, "temperature": config.temperature, "seed": client_index}
    if config.model:
        params["model"] = config.model
    start = time.perf_counter() - t0
    try:
        timing = await client.timed(prompt_for(config.prompt_tokens, ticket, text), **params)
    except APIError as exc:
        pause = exc.retry_after
        outcomes.append(
            Outcome(
                client_index,
                start,
                time.perf_counter() - t0,
                "error",
                str(exc) + (f" (Retry-After: {pause:g} s)" if pause is not None else ""),
            )
        )
        if pause is not None:  # the server asked for a pause: this client's next request waits for it
            await asyncio.sleep(min(pause, max(0.0, config.duration_s - (time.perf_counter() - t0))))
        return
    except (httpx.HTTPError, OSError, ValueError) as exc:  # dropped, cut, garbled: nobody said why
        outcomes.append(Outcome(client_index, start, time.perf_counter() - t0, "lost", f"{type(exc).__name__}: {exc}"))
        return
    end = time.perf_counter() - t0
    if timing.finish_reason is None:
        outcomes.append(Outcome(client_index, start, end, "lost", "the stream ended without a finish_reason"))
        return
    outcomes.append(Outcome(client_index, start, end, "ok", None, timing.ttft_s, timing.gaps_s, timing.completion_tokens or timing.chunks))


def run(config: LoadConfig, out: Path, log: Callable[[str], None] = print) -> dict:
    if not 1 <= config.clients <= 100 or config.duration_s <= 0 or config.ramp_s < 0:
        raise ValueError("need 1 <= --clients <= 100, --duration > 0 and --ramp >= 0")
    outcomes: list[Outcome] = []
    text = corpus()
    loop = ClosedLoop(config.clients, duration_s=config.duration_s, ramp_s=config.ramp_s)

    async def main() -> float:
        # httpx pools 100 connections: one per client up to that, so the test does not queue its own requests
        async with AsyncClient(config.url, timeout=config.timeout_s, max_retries=0) as client:
            t0 = time.perf_counter()

            async def report() -> None:
                while True:
                    await asyncio.sleep(5)
                    done = len(outcomes)
                    lost = sum(o.kind == "lost" for o in outcomes)
                    log(
                        f"  {time.perf_counter() - t0:5.0f} s: {loop.active:>3} clients, {done} requests ended, "
                        f"{sum(o.kind == 'error' for o in outcomes)} errors, {lost} lost"
                    )

            async def send(index: int, ticket: int) -> None:
                await _request(index, ticket, config, client, text, t0, outcomes)

            def stop(signame: str) -> None:
                log(f"  {signame}: no new requests; the {loop.active} clients' requests in flight finish, then the report")
                loop.stop()

            running = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):  # an early end still reports what was measured
                running.add_signal_handler(signum, stop, signal.Signals(signum).name)
            reporter = asyncio.create_task(report())
            try:
                return await loop.run(send)
            finally:
                reporter.cancel()
                for signum in (signal.SIGINT, signal.SIGTERM):
                    running.remove_signal_handler(signum)

    wall = asyncio.run(main())
    result = summarise(config, outcomes, wall)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(result | {"outcomes": [asdict(o) for o in outcomes]}, indent=2) + "\n")
    (out / "load.md").write_text(markdown(result))
    _plot(out / "load.png", result)
    write_study(out / "load.md")
    return result


def summarise(config: LoadConfig, outcomes: list[Outcome], wall: float) -> dict:
    ok = [o for o in outcomes if o.kind == "ok"]
    tokens = sum(o.completion_tokens for o in ok)
    seconds = int(wall) + 1
    timeline = []
    for s in range(seconds):
        ended = [o for o in outcomes if s <= o.ended_s < s + 1]
        timeline.append(
            {
                "second": s,
                "in_flight": sum(o.started_s <= s < o.ended_s for o in outcomes),
                "ended": len(ended),
                "tokens": sum(o.completion_tokens for o in ended if o.kind == "ok"),
            }
        )
    errors = [o for o in outcomes if o.kind == "error"]
    lost = [o for o in outcomes if o.kind == "lost"]
    return {
        "config": asdict(config),
        "wall_s": wall,
        "requests": len(outcomes),
        "ok": len(ok),
        "errors": len(errors),
        "lost": len(lost),
        "error_rate": len(errors) / max(len(outcomes), 1),
        "throughput_tok_s": tokens / wall,
        "latency_s": percentiles([o.ended_s - o.started_s for o in ok]),
        "ttft_s": percentiles([o.ttft_s for o in ok if o.ttft_s is not None]),
        "itl_s": percentiles([g for o in ok for g in o.gaps_s]),
        "first_errors": sorted({o.detail for o in errors if o.detail})[:5],
        "first_lost": sorted({o.detail for o in lost if o.detail})[:5],
        "timeline": timeline,
        "passed": not lost,
    }


def markdown(result: dict) -> str:
    c = result["config"]

    def row(name: str, values: dict) -> str:
        return f"| {name} | " + " | ".join(f"{1000 * values[q]:.0f}" if q in values else "-" for q in ("p50", "p95", "p99")) + " |"

    lines = [
        "# Load test",
        "",
        f"{c['clients']} streaming clients (ramped over {c['ramp_s']:g} s) for {c['duration_s']:g} s against {c['url']}"
        f" ({c['model'] or 'default model'}), {c['prompt_tokens']}-token prompts, {c['max_tokens']} tokens each, "
        f"temperature {c['temperature']:g}.",
        "",
        f"**{'PASSED' if result['passed'] else 'FAILED'}**: {result['requests']} requests, {result['ok']} complete, "
        f"{result['errors']} clear errors ({100 * result['error_rate']:.1f}%), {result['lost']} lost; "
        f"{result['throughput_tok_s']:.1f} completion tokens/s over {result['wall_s']:.1f} s.",
        "",
        "| ms | p50 | p95 | p99 |",
        "|---|---|---|---|",
        row("request latency", result["latency_s"]),
        row("time to first token", result["ttft_s"]),
        row("inter-token latency", result["itl_s"]),
    ]
    if result["first_errors"]:
        lines += ["", "Errors: " + "; ".join(result["first_errors"])]
    if result["first_lost"]:
        lines += ["", "Lost: " + "; ".join(result["first_lost"])]
    return "\n".join(lines) + "\n"


def _plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = [t["second"] for t in result["timeline"]]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(seconds, [t["tokens"] for t in result["timeline"]], label="completion tokens / s")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("tokens / s")
    other = ax.twinx()
    other.plot(seconds, [t["in_flight"] for t in result["timeline"]], color="grey", linestyle="--", label="requests in flight")
    other.set_ylabel("requests in flight")
    ax.set_title(f"Load test: {result['ok']} complete, {result['errors']} errors, {result['lost']} lost", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
