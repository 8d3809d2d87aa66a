"""bench.suite's report: the ratios of the engine over its peers, the targets of issue 4 they are
checked against, the markdown tables (bench/results/suite.md) and the decode plot (suite.png).

Not run on its own: bench.suite calls ratios per model, then markdown and plot on the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.suite_cases import CLIENTS, HTTP_TOKENS, PROMPT_LENGTHS, SAMPLES

TARGETS = (  # (key, what, minimum (or maximum when the name says "at most"))
    ("int8_over_llama_q8", "decode: engine int8 / llama.cpp Q8_0", 1.2),
    ("int4_over_llama_q4", "decode: engine int4 / llama.cpp Q4", 1.5),
    ("gguf_over_llama_q4", "decode: engine gguf (the file's blocks) / llama.cpp on that file", 1.5),
    ("ttft512_int8_over_gguf", "TTFT@512: engine int8 / engine gguf", 1.0),
    ("ttft1536_int8_over_gguf", "TTFT@1536: engine int8 / engine gguf", 1.0),
    ("rss_int8_over_gguf", "server RSS loaded: int8 export / gguf export", 1.0),
    ("int8_over_optimum", "decode: engine int8 / optimum generate", 2.0),
    ("int8_of_bandwidth_floor", "decode: engine int8 / bandwidth floor", 0.8),
    ("ttft512_llama_over_int8", "TTFT@512: llama.cpp Q8_0 / engine int8", 1.0),
    ("n16_over_n1", "n=16 aggregate / n=1 (engine)", 6.0),
    ("clients16_over_clients1", "16 clients aggregate / 1 client (server)", 4.0),
    ("http_overhead_at_most", f"HTTP+SSE share of a {HTTP_TOKENS}-token completion (at most)", 0.05),
    ("rss_mb_at_most", "server RSS with the model loaded, MB (at most)", 400.0),
)
RSS_TARGET_MODEL = "smollm2-135m"  # the issue sets the RSS bound for SmolLM2 INT8; Gemma's embedding alone is 168M parameters


def ratios(model: dict, bandwidth: float, name: str = RSS_TARGET_MODEL) -> dict[str, float | None]:
    def decode(label: str) -> float | None:
        return (model["decode"].get(label) or {}).get("decode_tok_s_median")

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def ttft_of(length: str, label: str) -> float | None:
        return (model["ttft"].get(length, {}).get(label) or {}).get("ttft_ms_median")

    floor = bandwidth * 1e3 / model["weights_mb_per_token"]["engine int8"]  # tok/s if only weights moved
    ttft = model["ttft"]["512"]
    http = model["http"]
    return {
        "int8_over_llama_q8": div(decode("engine int8"), decode("llama.cpp Q8_0")),
        "int4_over_llama_q4": div(decode("engine int4"), decode("llama.cpp Q4")),
        "gguf_over_llama_q4": div(decode("engine gguf"), decode("llama.cpp Q4")),
        "ttft512_int8_over_gguf": div(ttft_of("512", "engine int8"), ttft_of("512", "engine gguf")),
        "ttft1536_int8_over_gguf": div(ttft_of("1536", "engine int8"), ttft_of("1536", "engine gguf")),
        "rss_int8_over_gguf": div(
            model.get("server_rss_mb_by_export", {}).get("int8"), model.get("server_rss_mb_by_export", {}).get("gguf")
        ),
        "int8_over_optimum": div(decode("engine int8"), decode("optimum")),
        "int8_of_bandwidth_floor": div(decode("engine int8"), floor),
        "ttft512_llama_over_int8": div((ttft.get("llama.cpp Q8_0") or {}).get("ttft_ms_median"), ttft["engine int8"]["ttft_ms_median"]),
        "n16_over_n1": div(
            model["samples"]["16"]["engine int8"]["aggregate_tok_s_median"], model["samples"]["1"]["engine int8"]["aggregate_tok_s_median"]
        ),
        "n64_over_n1": div(
            model["samples"]["64"]["engine int8"]["aggregate_tok_s_median"], model["samples"]["1"]["engine int8"]["aggregate_tok_s_median"]
        ),
        "clients16_over_clients1": div(model["clients"]["16"]["aggregate_tok_s"], model["clients"]["1"]["aggregate_tok_s"]),
        "http_overhead_at_most": 1 - http["engine int8"]["total_s_median"] / http["server int8"]["total_s_median"],
        "rss_mb_at_most": model["server_rss_mb_loaded"] if name == RSS_TARGET_MODEL else None,
        "bandwidth_floor_tok_s": floor,
    }


def markdown(results: dict, info: dict, args: argparse.Namespace) -> str:
    lines = [
        f"bench.suite: {args.threads} threads, {args.repeats} rounds, {args.tokens} new tokens; {info['cpu']}, "
        f"{info['cores']} cores; memory bandwidth {info['bandwidth_gb_s']:.1f} GB/s (copy); {info['date']}.",
        "",
    ]
    for name, model in results.items():
        lines += [f"## {name}", ""]
        labels = list(model["decode"])
        lines += [
            "| path | decode tok/s | "
            + " | ".join(f"TTFT@{n} ms" for n in PROMPT_LENGTHS)
            + " | "
            + " | ".join(f"n={n} tok/s" for n in SAMPLES)
            + " |",
            "|---" * (2 + len(PROMPT_LENGTHS) + len(SAMPLES)) + "|",
        ]
        for label in labels:
            cells = [_fmt(model["decode"][label]["decode_tok_s_median"])]
            cells += [_fmt(model["ttft"][str(n)][label]["ttft_ms_median"]) for n in PROMPT_LENGTHS]
            cells += [_fmt((model["samples"][str(n)].get(label) or {}).get("aggregate_tok_s_median")) for n in SAMPLES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for label, why in model["missing"].items():
            lines.append(f"| {label} | {why} |")
        lines += [
            "",
            "Ratios of the engine (int8 unless named) over each peer, same run:",
            "",
            "| peer | decode | TTFT@32 | TTFT@512 | TTFT@1536 | n=16 |",
            "|---|---|---|---|---|---|",
        ]
        for peer in labels:
            if peer.startswith("engine"):
                continue
            row = [_ratio(model["decode"]["engine int8"]["decode_tok_s_median"], model["decode"][peer]["decode_tok_s_median"])]
            row += [
                _ratio(model["ttft"][str(n)][peer]["ttft_ms_median"], model["ttft"][str(n)]["engine int8"]["ttft_ms_median"])
                for n in PROMPT_LENGTHS
            ]
            n16 = model["samples"]["16"]
            row.append(_ratio(n16["engine int8"]["aggregate_tok_s_median"], (n16.get(peer) or {}).get("aggregate_tok_s_median")))
            lines.append(f"| {peer} | " + " | ".join(row) + " |")
        lines += [
            "",
            "Concurrent streaming clients on the server (temperature 0.8, 128-token prompt):",
            "",
            "| clients | aggregate tok/s | latency p50 s | latency p95 s | TTFT p50 s | TTFT p95 s | errors |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in CLIENTS:
            r = model["clients"][str(c)]
            lines.append(
                f"| {c} | {r['aggregate_tok_s']:.1f} | {r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | "
                f"{r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} | {r['errors']} |"
            )
        lines += ["", "Targets (issue 4):", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        measured = model["ratios"]
        for key, what, goal in TARGETS:
            value = measured.get(key)
            at_most = key.endswith("at_most")
            met = None if value is None else (value <= goal if at_most else value >= goal)
            lines.append(
                f"| {what} | {_fmt(value, 3)} | {'<=' if at_most else '>='} {goal} | "
                f"{'n/a' if met is None else ('yes' if met else '**no**')} |"
            )
        lines += [
            "",
            f"Bandwidth floor for engine int8: {measured['bandwidth_floor_tok_s']:.0f} tok/s "
            f"({model['weights_mb_per_token']['engine int8']:.0f} MB of weights per token); server RSS "
            f"{model['server_rss_mb_loaded']:.0f} MB loaded, {model['server_rss_mb_peak']:.0f} MB peak; loaded, by "
            "export: " + ", ".join(f"{p} {mb:.0f} MB" for p, mb in model.get("server_rss_mb_by_export", {}).items()) + ".",
            "",
        ]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if ours is None or not theirs else f"{ours / theirs:.2f}x"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (name, model) in zip(axes[0], results.items(), strict=True):
        labels = list(model["decode"])
        ax.barh(labels, [model["decode"][label]["decode_tok_s_median"] for label in labels])
        ax.axvline(model["ratios"]["bandwidth_floor_tok_s"], linestyle="--", color="grey", label="bandwidth floor (int8)")
        ax.set_title(f"{name}: single-stream decode")
        ax.set_xlabel("tok/s (median)")
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
