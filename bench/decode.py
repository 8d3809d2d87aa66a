"""Single-stream greedy decode: our engine against optimum's ORTModelForCausalLM, per bundled model.

    .venv/bin/python -m bench.decode [--models gemma3-270m smollm2-135m] [--repeats 5] [--tokens 64]

Both paths get the same prompt ids and greedy decoding. The engine runs the model_repository export
(onnxruntime-genai's fused graph, 8-bit MatMulNBits) on --threads ONNX Runtime intra-op threads;
optimum runs its own INT8 export of the same weights (built once from the bundled GGUF and cached
under bench/.cache/) in three configurations of (ORT intra-op threads, torch threads): the engine's
ORT threads with torch's default pool, the same with one torch thread (torch's and ORT's pools
compete for the cores), and one thread for both. The engine's ratio is taken over the fastest.

Protocol: one discarded warm-up per path, then --repeats rounds that run every path once, in
alternating order (engine, optimum..., then the reverse) so that noise on the shared machine hits
them alike; before each run it waits (up to --quiet-wait) for other processes to leave the CPU idle.
TTFT is the time to the first generated token (prefill + one sampling step); decode tok/s counts
the tokens after it over the time after it, so prefill does not count. Weights GB/s is decode tok/s
times the bytes of weights one decode step reads (every initializer except tables read only through
Gather, i.e. embeddings, which are read a row at a time).
The paths are in bench/paths.py; the machine's gauges and the weight bytes in bench/machine.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.machine import Busy, machine_info, wait_quiet, weight_bytes_per_token
from bench.paths import ROOT, EnginePath, OptimumPath, Run, optimum_folder

MODELS = ("gemma3-270m", "smollm2-135m")
ENGINE = "engine"

# HumanEval-style: imports, a signature and a docstring with doctests; the model writes the body.
PROMPT = '''from typing import List


def merge_intervals(intervals: List[List[int]]) -> List[List[int]]:
    """Merge all overlapping intervals and return them sorted by their start.
    Two intervals overlap when one starts before or where the other ends.
    >>> merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]])
    [[1, 6], [8, 10], [15, 18]]
    >>> merge_intervals([[1, 4], [4, 5]])
    [[1, 5]]
    """
'''


def summarise(runs: list[Run], weight_bytes: int) -> dict:
    rates = [r.decode_tok_s for r in runs]
    ttfts = [r.ttft_s * 1e3 for r in runs]
    return {
        "tokens": sorted({r.tokens for r in runs}),
        "decode_tok_s_median": statistics.median(rates),
        "decode_tok_s_min": min(rates),
        "decode_tok_s_max": max(rates),
        "ttft_ms_median": statistics.median(ttfts),
        "ttft_ms_min": min(ttfts),
        "others_cores_median": statistics.median(r.others_cores for r in runs),
        "weights_mb_per_token": weight_bytes / 1e6,
        "weights_gb_s_median": statistics.median(rates) * weight_bytes / 1e9,
    }


# A quality check beside the speed: teacher-forced NLL of a fixed stretch of real code (the standard
# library's textwrap.py), so a faster graph cannot hide a worse model.
NLL_TOKENS = 512


def nll_text_ids(engine: EnginePath) -> list[int]:
    from server.verify import corpus_ids

    return corpus_ids(engine.engine.prompter.tokenizer, engine.engine.manifest.prompt_prefix_ids, NLL_TOKENS)


def logits_nll(logits, ids: list[int]) -> float:
    import numpy as np

    from server.engine import log_softmax
    from server.verify import mean_nll

    return mean_nll(log_softmax(np.asarray(logits, dtype=np.float32)), ids)


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def bench_model(name: str, args: argparse.Namespace, torch_default: int) -> dict:
    folder = optimum_folder(name)
    print(f"[{name}] loading the engine and optimum's model", flush=True)
    engine = EnginePath(args.repository, name, args.threads)
    prompt = engine.prepare(PROMPT, args.tokens)  # tokenised once: neither path times tokenisation
    ids = prompt.ids
    tokenizer = engine.engine.prompter.tokenizer

    # Optimum's configurations, (ORT intra-op threads, torch threads): the engine's ORT threads with
    # torch's default pool and with one torch thread, and one thread for both (its graph of many
    # small ops can lose more to thread hand-offs than it gains from a second core).
    configs = dict.fromkeys([(args.threads, torch_default), (args.threads, 1), (1, 1)])
    sessions = {ort: OptimumPath(folder, ort) for ort in dict.fromkeys(ort for ort, _ in configs)}
    # path label -> how to run it once
    paths = {ENGINE: lambda: engine.run(prompt, args.tokens)}
    for ort, torch_threads in configs:
        label = f"optimum (ORT {ort}, torch {torch_threads})"
        paths[label] = lambda ort=ort, t=torch_threads: sessions[ort].run(ids, args.tokens, t)
    optimums = [label for label in paths if label != ENGINE]
    print(f"[{name}] engine: {args.threads} ORT threads; {', '.join(optimums)}", flush=True)

    def measured(label: str) -> tuple[Run, object]:
        gc.collect()
        waited = wait_quiet(args.quiet_wait)
        gauge = Busy()
        run, output = paths[label]()
        run.others_cores, run.waited_s = gauge.others(), waited
        return run, output

    width = max(map(len, paths))
    texts, warmups, runs = {}, {}, {label: [] for label in paths}
    for label in paths:
        run, output = measured(label)
        warmups[label] = asdict(run)
        texts[label] = output if label == ENGINE else tokenizer.decode(output, skip_special_tokens=True)
        print(f"[{name}] warm-up  {label:<{width}} {_line(run)}", flush=True)
    for round_ in range(args.repeats):
        order = list(paths) if round_ % 2 == 0 else list(reversed(paths))  # A B C, C B A, ...
        for label in order:
            run, _ = measured(label)
            runs[label].append(run)
            print(f"[{name}] run {round_ + 1}/{args.repeats}  {label:<{width}} {_line(run)}", flush=True)

    nll_ids = nll_text_ids(engine)
    engine_nll = logits_nll(engine.engine.runner.prefill(nll_ids, all_logits=True)[0], nll_ids)
    import torch

    with torch.no_grad():
        tensor = torch.tensor([nll_ids])
        optimum_logits = next(iter(sessions.values())).model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits
    optimum_nll = logits_nll(optimum_logits[0].numpy(), nll_ids)
    print(
        f"[{name}] teacher-forced NLL, {len(nll_ids)} tokens of textwrap.py: engine {engine_nll:.3f}, optimum {optimum_nll:.3f} nats/token",
        flush=True,
    )

    optimum_onnx = next(iter(sessions.values())).onnx_file
    weights = {label: weight_bytes_per_token(optimum_onnx) for label in optimums}
    weights[ENGINE] = weight_bytes_per_token(engine.onnx_file)
    summary = {label: summarise(runs[label], weights[label]) for label in paths}
    for label in paths:
        summary[label]["nll_nats_per_token"] = engine_nll if label == ENGINE else optimum_nll
    engine_rate = summary[ENGINE]["decode_tok_s_median"]
    for label in optimums:
        s = summary[label]
        s["engine_over_this"] = engine_rate / s["decode_tok_s_median"]
        # the same ratio taken round by round (both runs minutes apart at most), then the median
        s["engine_over_this_paired_median"] = statistics.median(
            e.decode_tok_s / o.decode_tok_s for e, o in zip(runs[ENGINE], runs[label], strict=False)
        )
    best_optimum = max(optimums, key=lambda label: summary[label]["decode_tok_s_median"])
    engine_text = texts[ENGINE]
    result = {
        "prompt_tokens": len(ids),
        "engine_onnx": str(engine.onnx_file.relative_to(ROOT)),
        "optimum_onnx": str(optimum_onnx.relative_to(ROOT)),
        "paths": {
            label: {
                "summary": summary[label],
                "warmup": warmups[label],
                "runs": [asdict(r) | {"decode_tok_s": r.decode_tok_s} for r in runs[label]],
                "text": texts[label],
                "text_common_prefix_with_engine_chars": common_prefix(texts[label], engine_text),
            }
            for label in paths
        },
        "best_optimum": best_optimum,
        "ratio_engine_over_optimum": summary[best_optimum]["engine_over_this"],
    }
    return result  # the sessions go with this frame: one model's pair in memory at a time


def _line(run: Run) -> str:
    return (
        f"{run.tokens:3d} tokens  TTFT {run.ttft_s * 1e3:7.1f} ms  decode {run.decode_tok_s:6.1f} tok/s"
        f"  (others {run.others_cores:.2f} cores, waited {run.waited_s:.0f} s)"
    )


# --- report ---


def markdown(results: dict, info: dict, config: dict) -> str:
    lines = [
        f"Single-stream greedy decode, {config['tokens']} new tokens, {config['repeats']} runs per path "
        f"(after a discarded warm-up), engine on {config['threads']} ORT intra-op threads; {info['cpu']}, "
        f"{info['cores']} cores; {info['date']}.",
        "",
        "| model | path | tokens | decode tok/s median | decode tok/s min | TTFT ms median | TTFT ms min "
        "| weights MB/token | weights GB/s | NLL nats/token | others' CPU (cores) | engine / optimum |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, model in results.items():
        for label, path in model["paths"].items():
            s = path["summary"]
            if label == ENGINE:
                ratio = f"**{model['ratio_engine_over_optimum']:.2f}x** (over the best optimum)"
            else:
                ratio = f"{s['engine_over_this']:.2f}x" + (" (best optimum)" if label == model["best_optimum"] else "")
            tokens = "/".join(str(t) for t in s["tokens"])
            lines.append(
                f"| {name} | {label} | {tokens} | {s['decode_tok_s_median']:.1f} | {s['decode_tok_s_min']:.1f} "
                f"| {s['ttft_ms_median']:.1f} | {s['ttft_ms_min']:.1f} | {s['weights_mb_per_token']:.0f} "
                f"| {s['weights_gb_s_median']:.1f} | {s['nll_nats_per_token']:.3f} | {s['others_cores_median']:.2f} | {ratio} |"
            )
    lines += [
        "",
        "engine / optimum: the engine's median decode tok/s over that optimum configuration's, same run; "
        "optimum (ORT n, torch m): ORT intra-op threads and torch.set_num_threads. "
        "decode tok/s excludes prefill (tokens after the first / time after the first). "
        "Weights GB/s: weight bytes one decode step reads x decode tok/s. Others' CPU: median CPU "
        "that other processes (and the hypervisor's steal) took during a run: the machine is shared; "
        "0 is a quiet run. NLL: teacher-forced mean negative log-likelihood of the first "
        f"{NLL_TOKENS} tokens of the standard library's textwrap.py, the same ids for both (lower is better).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per path, after one warm-up")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per run")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="ORT intra-op threads: the engine, and optimum but for its (ORT 1, torch 1) configuration",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each run, wait up to this many seconds for other processes to leave the CPU idle",
    )
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.tokens < 2 or args.repeats < 1:
        parser.error("--tokens must be at least 2 and --repeats at least 1")

    import torch

    torch_default = torch.get_num_threads()
    info = machine_info(torch_default)
    started = time.perf_counter()
    results = {name: bench_model(name, args, torch_default) for name in args.models}
    info["load_average_at_end"] = os.getloadavg()
    info["wall_s"] = time.perf_counter() - started
    config = {
        "tokens": args.tokens,
        "repeats": args.repeats,
        "threads": args.threads,
        "quiet_wait_s": args.quiet_wait,
        "prompt": PROMPT,
    }

    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "config": config, "models": results}
    (args.out / "decode.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(results, info, config)
    (args.out / "decode.md").write_text(table)
    print()
    print(table, end="")
    print(f"wrote {args.out / 'decode.json'} and {args.out / 'decode.md'} ({info['wall_s']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
