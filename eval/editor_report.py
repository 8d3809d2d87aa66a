"""The editor replay's figures and report: per server and pass, TTFT and latency p50/p90/p99, how
requests ended, the share of prompt tokens the server reused, and ratios over the reference server.

Definitions (from the client's side):
- TTFT: request sent -> first chunk with text, over every request whose first text came (completed ones,
  and cancelled ones that had some); a request cancelled before any text has none and is counted apart;
- latency: request sent -> end of stream, over completed requests only (a cancelled one has no end);
- reused: sum of `usage.prompt_tokens_details.cached_tokens` over sum of `prompt_tokens`, over the
  requests whose usage reports both (usage comes last, so cancelled requests have none); "n/a" where the
  server reports no cached_tokens at all, never a guess;
- ratios: each server's figure over the reference's (the first server named), pass by pass.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eval.html_page import write_study
from eval.stats import percentiles

if TYPE_CHECKING:
    from eval.editor_sessions import Request, Session

QUANTILES = (50, 90, 99)
_RATIO_KEYS = [("ttft_ms", q) for q in QUANTILES] + [("latency_ms", q) for q in QUANTILES]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    return percentiles(seconds, QUANTILES, scale=1000)


def summarise(records: list[Request]) -> dict[str, Any]:
    outcomes = Counter(r.outcome for r in records)
    reported = [r for r in records if r.prompt_tokens is not None and r.cached_tokens is not None]
    prompt_tokens = [r.prompt_tokens for r in records if r.prompt_tokens is not None]
    cached = sum(r.cached_tokens or 0 for r in reported)  # reported: both are there
    prompted = sum(r.prompt_tokens or 0 for r in reported)
    return {
        "requests": len(records),
        **{kind: outcomes.get(kind, 0) for kind in ("completed", "cancelled", "error", "lost")},
        "cancelled_before_text": sum(r.outcome == "cancelled" and r.ttft_s is None for r in records),
        "completed_without_text": sum(r.outcome == "completed" and r.ttft_s is None for r in records),
        # typed at a pace: the suggestions that arrived whole before the next word (the last word is never cut)
        "shown_share": outcomes.get("completed", 0) / len(records) if records else None,
        "ttft_ms": _percentiles([r.ttft_s for r in records if r.ttft_s is not None]),
        "latency_ms": _percentiles([r.total_s for r in records if r.outcome == "completed"]),
        "prompt_tokens_mean": float(np.mean(prompt_tokens)) if prompt_tokens else None,
        "prompt_tokens_reported": prompted if reported else None,
        "cached_tokens": cached if reported else None,
        "reused_share": cached / prompted if reported and prompted else None,
        "first_errors": sorted({r.detail for r in records if r.outcome in ("error", "lost") and r.detail})[:5],
    }


def progress(records: list[Request]) -> str:
    """One session's progress line."""
    s = summarise(records)
    ttft = f"{s['ttft_ms']['p50']:.0f} ms" if s["ttft_ms"] else "-"
    reused = "n/a" if s["reused_share"] is None else f"{100 * s['reused_share']:.0f}%"
    lost = f", {s['error']} errors, {s['lost']} lost" if s["error"] or s["lost"] else ""
    return f"{s['requests']} requests, {s['completed']} completed, {s['cancelled']} cancelled{lost}; TTFT p50 {ttft}, reused {reused}"


def ratios(servers: list[dict]) -> tuple[str | None, dict]:
    """(the reference's name, {server: {pass: {"ttft_ms_p50": ratio, ...}}}) over the first server that ran."""
    ran = [s for s in servers if "passes" in s]
    if not ran:
        return None, {}
    reference, found = ran[0], {}  # type: tuple[dict[str, Any], dict[str, dict[str, Any]]]
    for server in ran[1:]:
        found[server["name"]] = {}
        for phase, summary in server["passes"].items():
            base = reference["passes"][phase]
            found[server["name"]][phase] = {
                f"{metric}_p{q}": (
                    summary[metric][f"p{q}"] / base[metric][f"p{q}"]
                    if summary[metric] and base[metric] and base[metric][f"p{q}"] > 0
                    else None
                )
                for metric, q in _RATIO_KEYS
            } | {"shown_share": summary["shown_share"] / base["shown_share"] if summary["shown_share"] and base["shown_share"] else None}
    return reference["name"], found


def result(runs: list[dict], config: dict, sessions: list[Session], machine: dict | None = None) -> dict:
    """The whole report's data. `runs`: [{"label": model or "", "servers": [entry, ...]}], an entry being
    ServerReplay.entry() or {"name": ..., "unavailable": why}."""
    for run in runs:
        run["reference"], run["ratios"] = ratios(run["servers"])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "config": config,
        "machine": machine,
        "sessions": [
            {
                "file": s.file,
                "index": s.index,
                "words": len(s.cursors),
                "window_start": s.window_start,
                "first_cursor": s.cursors[0],
                "last_cursor": s.cursors[-1],
            }
            for s in sessions
        ],
        "runs": runs,
    }


def _ms(values: dict, *, sep: str = " / ") -> str:
    return sep.join(f"{values[f'p{q}']:,.0f}" for q in QUANTILES) if values else "-"


def _share(share: float | None) -> str:
    return "" if share is None else f" ({100 * share:.0f}%)"


def _typing(word_ms: float) -> str:
    if not word_ms:
        return "each completion awaited before the next word"
    return f"a word every {word_ms:g} ms, the request in flight cancelled at the next"


def markdown(data: dict) -> str:
    c, sessions = data["config"], data["sessions"]
    files = sorted({s["file"] for s in sessions})
    typing = _typing(c["word_ms"])
    lines = [
        "# Editor replay",
        "",
        f"{len(sessions)} sessions over {len(files)} files ({', '.join(Path(f).name for f in files)}), "
        f"{sum(s['words'] for s in sessions)} requests per pass; prompts the file up to the cursor from a fixed "
        f"line (at most {c['prompt_chars']} characters), {c['max_tokens']} tokens, greedy, stop at a blank line, "
        f"streaming; {typing}. Cold: the server's first pass; warm: the same sessions again.",
    ]
    if data.get("machine"):
        m = data["machine"]
        lines += ["", f"Machine: {m.get('cpu')}, {m.get('cores')} cores; {data['date']}."]
    for run in data["runs"]:
        if run["label"]:
            lines += ["", f"## {run['label']}"]
        if run.get("word_ms", c["word_ms"]) != c["word_ms"]:
            lines += ["", f"Typing: {_typing(run['word_ms'])}."]
        lines += [
            "",
            "| server | pass | requests | completed (shown) | cancelled (before text) | TTFT p50 / p90 / p99 (ms) "
            "| latency p50 / p90 / p99 (ms) | prompt tokens | reused |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for server in run["servers"]:
            if "passes" not in server:
                lines.append(f"| {server['name']} | - | not run: {server['unavailable']} | | | | | | |")
                continue
            for phase, s in server["passes"].items():
                failed = f" ({s['error']} errors, {s['lost']} lost)" if s["error"] or s["lost"] else ""
                tokens = f"{s['prompt_tokens_mean']:,.0f}" if s["prompt_tokens_mean"] is not None else "n/a"
                reused = "n/a" if s["reused_share"] is None else f"{100 * s['reused_share']:.1f}%"
                lines.append(
                    f"| {server['name']} | {phase} | {s['requests']}{failed} | {s['completed']}{_share(s['shown_share'])} | "
                    f"{s['cancelled']} ({s['cancelled_before_text']}) | {_ms(s['ttft_ms'])} | "
                    f"{_ms(s['latency_ms'])} | {tokens} | {reused} |"
                )
        if run["ratios"]:
            lines += [
                "",
                f"Ratios over {run['reference']} (below 1: faster):",
                "",
                "| server | pass | TTFT p50 | TTFT p90 | TTFT p99 | latency p50 | latency p90 | latency p99 | shown |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for name, per_pass in run["ratios"].items():
                for phase, r in per_pass.items():
                    keys = [f"{m}_p{q}" for m, q in _RATIO_KEYS] + ["shown_share"]
                    cells = " | ".join("-" if r.get(k) is None else f"{r[k]:.2f}x" for k in keys)
                    lines.append(f"| {name} | {phase} | {cells} |")
        noise = [
            f"{s['name']} {s['server_cores']:.2f} (others {s['others_cores']:.2f})"
            + (f", RSS after {s['rss_bytes_after'] / 2**20:,.0f} MB" if "rss_bytes_after" in s else "")
            for s in run["servers"]
            if "others_cores" in s
        ]
        if noise:
            lines += [
                "",
                "Cores each server used during its replay, and those the rest of the machine took (0 is a "
                "quiet machine): " + "; ".join(noise) + ".",
            ]
        lines += [f"\n{s['name']} {s['exited']}." for s in run["servers"] if s.get("exited")]
        errors = [(server["name"], e) for server in run["servers"] for s in server.get("passes", {}).values() for e in s["first_errors"]]
        if errors:
            lines += ["", "Errors: " + "; ".join(f"{name}: {e}" for name, e in errors[:5])]
    return "\n".join(lines) + "\n"


def plot(path: Path, data: dict) -> None:
    """TTFT and latency p50 per server and pass (bars), p90 as a tick above each, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["runs"]
    columns = min(len(runs), 4)
    rows = -(-len(runs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax, run in zip(axes.flat, runs, strict=False):
        ran = [s for s in run["servers"] if "passes" in s]
        bars = [(metric, phase) for metric in ("ttft_ms", "latency_ms") for phase in ("cold", "warm")]
        width = 0.8 / len(bars)
        for i, (metric, phase) in enumerate(bars):
            xs = [k + (i - (len(bars) - 1) / 2) * width for k in range(len(ran))]
            p50 = [s["passes"][phase][metric].get("p50", 0.0) for s in ran]
            p90 = [s["passes"][phase][metric].get("p90", 0.0) for s in ran]
            ax.bar(
                xs,
                p50,
                width,
                label=f"{'TTFT' if metric == 'ttft_ms' else 'latency'} {phase}",
                alpha=0.95 if phase == "warm" else 0.55,
                color="C0" if metric == "ttft_ms" else "C1",
            )
            ax.scatter(xs, p90, marker="_", color="black", s=80, zorder=3)
        ax.set_xticks(range(len(ran)), [s["name"] for s in ran], fontsize=8)
        ax.set_ylabel("ms (bar p50, tick p90)")
        shown = ", ".join(f"{s['name']} {100 * s['passes']['warm']['shown_share']:.0f}%" for s in ran) if run.get("word_ms") else ""
        ax.set_title(
            f"Editor replay {run['label']}".strip() + (f"\nshown before the next word (warm): {shown}" if shown else ""), fontsize=8
        )
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out: Path, data: dict, stem: str = "editor") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(data))
    plot(out / f"{stem}.png", data)
    write_study(out / f"{stem}.md")
