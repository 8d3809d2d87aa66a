"""Many samples of one prompt, the researcher's n: our server against llama.cpp's own, per bundled model.

    .venv/bin/python -m bench.samples [--models gemma3-270m smollm2-135m] [--ns 1 4 16 64] [--tokens 64]
        [--repeats 2] [--humaneval-before REV] [--humaneval-problems 40]

For each model and n, one server at a time, started fresh and stopped by its PID:

- `slipstream serve` on the model_repository export: one request asking for n samples;
- llama.cpp's `llama-server` (bench/build_llama_server.sh) on the GGUF the bundled model's package
  ships, started with `-np n` parallel slots and n times the context a slot needs: n requests of one
  sample at once, as a client of llama.cpp asks for n samples.

Every sample: the same prompt ids, `--tokens` new tokens exactly (EOS ignored), temperature 0.8, top-p
0.95, top-k 40, min-p 0.05 (llama.cpp's defaults for the last two, so that both samplers do the same
work), its own seed. The figure is the aggregate rate (n x tokens over the wall time of the n
samples), its ratio to the same server's n = 1, and ours over llama.cpp's at each n; --repeats rounds
alternate the two servers, each run after a wait for a quiet machine, medians reported.

--humaneval-before REV adds `slipstream eval humaneval --n 10 --temperatures 0.8` on Gemma-3 over the first
--humaneval-problems problems, run by the revision REV's own client against its own server, then by
this tree's against this tree's (the same command, each tree's defaults): the wall time of each and
after / before. Results: bench/results/samples.{json,md,png}.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import results as results_file
from bench.editor_peers import LLAMA_SERVER, Launch, LlamaServer, missing
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from testkit.server_process import ChildServer, ServerProcess

MODELS = ("gemma3-270m", "smollm2-135m")
NS = (1, 4, 16, 64)
OURS = "slipstream"
PROMPT = 'def parse_version(text: str) -> tuple[int, ...]:\n    """Split a dotted version string into its numbers."""\n'
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "top_k": 40, "min_p": 0.05, "ignore_eos": True}
SLOT_CONTEXT = 512  # a slot's context in llama-server: the prompt and the tokens with room to spare


async def _ours(url: str, model: str, ids: list[int], n: int, tokens: int) -> int:
    async with httpx.AsyncClient(timeout=600) as http:
        body = {"model": model, "prompt": ids, "n": n, "max_tokens": tokens, "seed": 1, **SAMPLING}
        response = await http.post(f"{url}/v1/completions", json=body)
        response.raise_for_status()
        return int(response.json()["usage"]["completion_tokens"])


async def _llama(url: str, model: str, ids: list[int], n: int, tokens: int) -> int:
    async with httpx.AsyncClient(timeout=600) as http:

        async def one(seed: int) -> int:
            body = {"model": model, "prompt": ids, "max_tokens": tokens, "seed": seed, "cache_prompt": True, **SAMPLING}
            response = await http.post(f"{url}/v1/completions", json=body)
            response.raise_for_status()
            return int(response.json()["usage"]["completion_tokens"])

        return sum(await asyncio.gather(*(one(seed) for seed in range(1, n + 1))))


def rate(server: str, launch: Launch, ids: list[int], n: int, tokens: int, repeats: int, quiet_wait: float) -> dict:
    """One server started for this n: a discarded warm-up, then `repeats` timed runs."""
    child: ChildServer
    if server == OURS:
        child = ServerProcess(launch.repository, [launch.model], threads=launch.threads)
    else:  # n parallel slots (-np), each with a slot's context
        slots = Launch(launch.model, launch.gguf, launch.repository, launch.threads, SLOT_CONTEXT * n)
        child = LlamaServer(slots, speculative=False, extra=("-np", str(n)))
    ask = _ours if server == OURS else _llama
    try:
        child.wait_ready(timeout=600)
        asyncio.run(ask(child.url, launch.model, ids, n, tokens))
        runs = []
        for _ in range(repeats):
            wait_quiet(quiet_wait)
            start = time.perf_counter()
            made = asyncio.run(ask(child.url, launch.model, ids, n, tokens))
            runs.append({"tokens": made, "seconds": time.perf_counter() - start})
    finally:
        child.stop()
    if any(r["tokens"] != n * tokens for r in runs):
        raise RuntimeError(f"{server} made {[r['tokens'] for r in runs]} tokens, not {n * tokens}")
    rates = [r["tokens"] / r["seconds"] for r in runs]
    return {"tok_s": statistics.median(rates), "runs": runs}


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from server.engine import Prompter
    from server.models.catalog import lookup

    ids = Prompter(args.repository, name).encode(PROMPT)
    servers = [OURS] + ([LLAMA_SERVER] if not missing(LLAMA_SERVER) else [])
    result: dict = {"prompt_tokens": len(ids), "servers": {s: {} for s in servers}}
    if LLAMA_SERVER not in servers:
        result["unavailable"] = {LLAMA_SERVER: missing(LLAMA_SERVER)}
    with tempfile.TemporaryDirectory() as tmp:
        gguf = lookup(name).locate_gguf(Path(tmp)) if LLAMA_SERVER in servers else None
        launch = Launch(name, gguf, args.repository, args.threads, SLOT_CONTEXT)
        if gguf is not None:
            result["gguf"] = gguf.name
        for n in args.ns:
            for server in servers if n % 2 else reversed(servers):  # alternate who goes first
                entry = rate(server, launch, ids, n, args.tokens, args.repeats, args.quiet_wait)
                result["servers"][server][str(n)] = entry
                print(f"[{name}] {server} n={n}: {entry['tok_s']:.0f} tok/s", flush=True)
    for by_n in result["servers"].values():
        one = by_n.get("1", {}).get("tok_s")
        for entry in by_n.values():
            entry["over_n1"] = entry["tok_s"] / one if one else None
    if LLAMA_SERVER in servers:
        result["ours_over_llama_server"] = {
            n: result["servers"][OURS][n]["tok_s"] / result["servers"][LLAMA_SERVER][n]["tok_s"] for n in result["servers"][OURS]
        }
    return result


def humaneval_run(tree: Path, label: str, args: argparse.Namespace, out: Path) -> dict:
    """The tree's own `slipstream eval humaneval` against the tree's own server (Gemma-3, n = 10)."""
    from bench.revisions import TreeServer

    server = TreeServer(tree, args.repository, "gemma3-270m", args.threads)
    try:
        wait_quiet(args.quiet_wait)
        url = f"http://127.0.0.1:{server.port}"
        command = [sys.executable, "-m", "slipstream.cli", "eval", "humaneval", "--url", url, "--model", "gemma3-270m"]
        command += ["--n", "10", "--temperatures", "0.8", "--limit", str(args.humaneval_problems), "--out", str(out / label)]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=7200)
        seconds = time.perf_counter() - start
    finally:
        server.close()
    if done.returncode != 0:
        raise RuntimeError(f"{label}'s eval humaneval failed:\n{done.stderr[-2000:]}")
    print(f"[humaneval] {label}: {seconds:.0f} s", flush=True)
    return {"revision": label, "wall_s": seconds, "last_lines": done.stdout.strip().splitlines()[-3:]}


def markdown(data: dict) -> str:
    info = data["machine"]
    lines = [
        "# Many samples of one prompt",
        "",
        f"{info['cpu']}, {data['config']['threads']} threads; {data['config']['tokens']} new tokens a sample, temperature 0.8, "
        "top-p 0.95, top-k 40, min-p 0.05; ours: one request with n; llama.cpp's llama-server: -np n slots, n requests "
        "at once. Aggregate tok/s (median of the rounds), its ratio to the same server's n = 1, ours over llama-server.",
        "",
        "| model | n | slipstream tok/s | x its n=1 | llama-server tok/s | x its n=1 | ours / llama-server |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, result in data["models"].items():
        ours, peer = result["servers"][OURS], result["servers"].get(LLAMA_SERVER, {})
        for n in ours:
            theirs = peer.get(n)
            lines.append(
                f"| {model} | {n} | {ours[n]['tok_s']:.0f} | {ours[n]['over_n1']:.2f}x | "
                + (
                    f"{theirs['tok_s']:.0f} | {theirs['over_n1']:.2f}x | {ours[n]['tok_s'] / theirs['tok_s']:.2f}x |"
                    if theirs
                    else "- | - | - |"
                )
            )
        for server, why in result.get("unavailable", {}).items():
            lines.append(f"\n{model}: {server} did not run: {why}")
    if "humaneval" in data:
        he = data["humaneval"]
        lines += [
            "",
            f"HumanEval, Gemma-3, n = 10 at temperature 0.8, the first {data['config']['humaneval_problems']} problems, each "
            "revision's own `slipstream eval humaneval` against its own server:",
            "",
            "| revision | wall s |",
            "|---|---|",
            *(f"| {run['revision']} | {run['wall_s']:.0f} |" for run in he["runs"]),
            "",
            f"after / before: {he['after_over_before']:.2f} (under 1 is faster)",
        ]
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data["models"]), figsize=(6 * len(data["models"]), 4), squeeze=False)
    for ax, (model, result) in zip(axes[0], data["models"].items(), strict=True):
        for server, by_n in result["servers"].items():
            ns = [int(n) for n in by_n]
            ax.plot(ns, [by_n[str(n)]["tok_s"] for n in ns], marker="o", label=server)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples of one prompt (n)")
        ax.set_ylabel("aggregate tok/s")
        ax.set_title(model)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--ns", type=int, nargs="+", default=list(NS))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--humaneval-before", help="a revision whose HumanEval n = 10 wall time this tree's is set against")
    parser.add_argument("--humaneval-problems", type=int, default=40)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    for name in args.models:
        if not (args.repository / name / "manifest.json").is_file():
            parser.error(f"export {name} first: slipstream export {name}")
    data: dict = {
        "machine": machine_info(args.threads),
        "config": {k: v for k, v in vars(args).items() if k not in ("repository", "out")},
        "models": {name: bench_model(name, args) for name in args.models},
    }
    if args.humaneval_before:
        from bench.revisions import unpack

        sha, before = unpack(args.humaneval_before)
        with tempfile.TemporaryDirectory() as tmp:
            runs = [humaneval_run(before, sha[:12], args, Path(tmp)), humaneval_run(ROOT, "this tree", args, Path(tmp))]
        data["humaneval"] = {"runs": runs, "after_over_before": runs[1]["wall_s"] / runs[0]["wall_s"]}
    results_file.write(args.out, "samples", data, markdown(data), lambda path: plot(data, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
