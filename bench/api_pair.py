"""Two `slipstream serve` children on one model, measured in one run (bench.triton, bench.ray): one
streaming client's --tokens completion (TTFT, end to end), then --clients concurrent streaming clients
(aggregate tok/s, p50/p95), in alternating order after a warm-up; and the markdown table of both."""

from __future__ import annotations

import argparse
import statistics

from bench.suite_cases import Bench, singles
from bench.suite_paths import Server


def measure(args: argparse.Namespace, servers: dict[str, Server], ids: list[int]) -> tuple[dict, dict]:
    """(one client, --clients clients), each by server label."""
    bench = Bench(args.model, args)
    single = bench.measure("1 client", {k: (lambda s=s: s.single(ids, args.tokens)) for k, s in servers.items()}, singles)
    many = bench.measure(
        f"{args.clients} clients",
        {k: (lambda s=s: s.clients(ids, args.clients, args.requests, args.tokens)) for k, s in servers.items()},
        lambda runs: {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
        | {"errors": sum(r["errors"] for r in runs), "runs": runs},
    )
    return single, many


def table(single: dict, many: dict, clients: int) -> list[str]:
    """One row per server: one client's total and TTFT, the clients' tok/s, p50, p95 and errors."""
    lines = [
        f"| backend | 1 client: total s | 1 client: TTFT ms | {clients} clients: tok/s | p50 s | p95 s | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in single:
        s, m = single[label], many[label]
        lines.append(
            f"| {label} | {s['total_s_median']:.3f} | {s['ttft_ms_median']:.1f} | {m['aggregate_tok_s']:.1f} | "
            f"{m['latency_p50_s']:.2f} | {m['latency_p95_s']:.2f} | {m['errors']} |"
        )
    return lines
