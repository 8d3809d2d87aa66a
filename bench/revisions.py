"""This checkout against an earlier revision of itself, in one sitting: did a change keep the speed?

    .venv/bin/python -m bench.revisions --before REV [--after REV] [--models gemma3-270m smollm2-135m] [--rounds 5]

The earlier revision (and --after, else this working tree) is unpacked (git archive) under
bench/.cache/revisions/<sha>/ and both trees run
side by side on the same exports (model_repository/) and the same prompt ids:

- the engine in process: a worker process per tree holds the model and times `Engine.generate`
  (TTFT at 32, 512 and 1536 prompt tokens, one new token; single-stream greedy decode, --tokens new
  tokens, EOS ignored);
- the server: each tree's own `slipstream serve` on 127.0.0.1, timed through client.api (streaming
  TTFT at 512 tokens; a 128-token completion, whose time over the engine's is the HTTP + SSE overhead).

Each round runs every case on both trees, in alternating order, each run after a wait for a quiet
machine. Reported per case: the medians and after / before (for TTFT and time, under 1 is faster;
for tok/s, over 1 is faster). Results: bench/results/revisions.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from io import BytesIO
from pathlib import Path

import httpx

from bench import results as results_file
from bench.decode import MODELS
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from bench.suite import add_run_flags

PROMPT_LENGTHS = (32, 512, 1536)
HTTP_TOKENS = 128
SERVER_TTFT_TOKENS = 512

# Runs inside a tree (its folder first on sys.path): only the engine calls every revision has.
_WORKER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from server.engine.engine import Engine
from server.engine.sampling import SamplingParams
load = getattr(Engine, "load", Engine)  # older revisions: the constructor loaded the model
engine = load(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
prompter = getattr(engine, "prompter", engine)  # older revisions: the engine was its own prompter
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    ask = json.loads(line)
    if ask["op"] == "encode":
        print(json.dumps(prompter.encode(ask["text"])), flush=True)
        continue
    prompt = prompter.prepare(ask["ids"], ask["tokens"])
    params = SamplingParams(max_tokens=ask["tokens"], temperature=0.0, ignore_eos=True)
    start, first, tokens = time.perf_counter(), None, 0
    for event in engine.generate(prompt, params):
        if type(event).__name__ == "Usage":
            tokens = event.completion_tokens
        elif first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    print(json.dumps({"ttft_s": first - start, "total_s": end - start, "tokens": tokens}), flush=True)
"""


class Worker:
    """One tree's engine in a child process, asked one JSON line at a time."""

    def __init__(self, tree: Path, repository: Path, name: str, threads: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(repository), name, str(threads), str(tree)],
            cwd=tree,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._read()

    def _read(self) -> object:
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise RuntimeError(f"the engine worker exited with {self.process.wait()}")
        return json.loads(line)

    def ask(self, **request: object) -> object:
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        return self._read()

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=30)


class TreeServer:
    """One tree's `slipstream serve` (whichever module its command lived in then)."""

    def __init__(self, tree: Path, repository: Path, name: str, threads: int) -> None:
        from client.api import Client
        from testkit.server_process import free_port

        module = "slipstream.cli" if (tree / "slipstream" / "cli.py").exists() else "server.cli"
        self.port = free_port()
        self.log = Path(tempfile.gettempdir()) / f"slipstream-revision-{tree.name}-{self.port}.log"
        with self.log.open("w") as sink:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    module,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--model-repository",
                    str(repository),
                    "--no-export-missing",
                    "--threads",
                    str(threads),
                    "--model",
                    name,
                ],
                cwd=tree,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.client = Client(f"http://127.0.0.1:{self.port}", timeout=600)
        deadline = time.monotonic() + 600
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{tree.name}'s server exited:\n{self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tree.name}'s server was not ready in 600 s")
            time.sleep(0.3)
        self.name = name

    def run(self, ids: list[int], tokens: int) -> dict:
        timing = self.client.timed(
            ids, model=self.name, max_tokens=tokens, temperature=0, ignore_eos=True, cache_prompt=False
        )  # cold; an older server ignores the field
        return {
            "ttft_s": timing.ttft_s if timing.ttft_s is not None else timing.total_s,
            "total_s": timing.total_s,
            "tokens": timing.completion_tokens,
        }

    def close(self) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def unpack(revision: str) -> tuple[str, Path]:
    """The revision's tracked files under bench/.cache/revisions/<sha>/ (unpacked once)."""
    sha = subprocess.run(["git", "rev-parse", revision], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
    tree = ROOT / "bench" / ".cache" / "revisions" / sha[:12]
    if not (tree / ".unpacked").exists():
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        tree.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
        (tree / ".unpacked").touch()
    return sha, tree


def cases(ids: list[int], tokens: int) -> dict[str, tuple[str, list[int], int]]:
    """case -> (engine or server, prompt ids, new tokens)."""
    out = {f"engine TTFT @{n}": ("engine", ids[:n], 1) for n in PROMPT_LENGTHS}
    out[f"engine decode {tokens} tok"] = ("engine", ids[:32], tokens)
    out[f"engine {HTTP_TOKENS}-token completion"] = ("engine", ids[:32], HTTP_TOKENS)
    out[f"server TTFT @{SERVER_TTFT_TOKENS}"] = ("server", ids[:SERVER_TTFT_TOKENS], 1)
    out[f"server decode {tokens} tok"] = ("server", ids[:32], tokens)
    out[f"server {HTTP_TOKENS}-token completion"] = ("server", ids[:32], HTTP_TOKENS)
    return out


def figure(case: str, run: dict) -> float:
    """The number a case reports for one run: tok/s after the first token for decode, else seconds."""
    if "decode" in case:
        return (run["tokens"] - 1) / (run["total_s"] - run["ttft_s"])
    return run["total_s"] if "completion" in case else run["ttft_s"]


def bench_model(name: str, trees: dict[str, Path], args: argparse.Namespace) -> dict:
    engines = {side: Worker(tree, args.repository, name, args.threads) for side, tree in trees.items()}
    servers = {side: TreeServer(tree, args.repository, name, args.threads) for side, tree in trees.items()}
    try:
        text = Path(textwrap.__file__).read_text() * 2
        ids: list[int] = engines["after"].ask(op="encode", text=text)[: max(PROMPT_LENGTHS)]  # type: ignore[index]
        plan = cases(ids, args.tokens)
        runs: dict[str, dict[str, list[float]]] = {case: {side: [] for side in trees} for case in plan}
        for round_ in range(args.rounds + 1):  # round 0: the warm-up, discarded
            order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for case, (path, prompt, tokens) in plan.items():
                for side in order:
                    wait_quiet(args.quiet_wait)
                    run = engines[side].ask(op="run", ids=prompt, tokens=tokens) if path == "engine" else servers[side].run(prompt, tokens)
                    if run["tokens"] != tokens:  # type: ignore[index]
                        raise RuntimeError(f"{side} generated {run['tokens']} tokens for {case}, not {tokens}")  # type: ignore[index]
                    if round_:
                        runs[case][side].append(figure(case, run))  # type: ignore[arg-type]
            print(f"[{name}] round {round_}/{args.rounds}" + (" (warm-up)" if not round_ else ""), flush=True)
    finally:
        for worker in engines.values():
            worker.close()
        for server in servers.values():
            server.close()
    # best: the fastest run (least time, most tok/s), what a noisy shared machine disturbs least
    best = {case: {side: (max if "decode" in case else min)(v) for side, v in sides.items()} for case, sides in runs.items()}
    result = {
        case: {"median": {side: statistics.median(v) for side, v in sides.items()}, "best": best[case], "runs": sides}
        for case, sides in runs.items()
    }
    for row in result.values():
        row["after_over_before"] = row["median"]["after"] / row["median"]["before"]
        row["best_after_over_before"] = row["best"]["after"] / row["best"]["before"]
    completion = f"{HTTP_TOKENS}-token completion"
    for side in trees:  # the HTTP + SSE share of a completion's time, per tree
        engine_s = result[f"engine {completion}"]["median"][side]
        server_s = result[f"server {completion}"]["median"][side]
        result.setdefault("http_overhead_share", {})[side] = 1 - engine_s / server_s  # type: ignore[index]
    return result


def markdown(results: dict, info: dict, config: dict) -> str:
    lines = [
        f"# {config['after']} against {config['before']}",
        "",
        f"{info['cpu']}, {config['threads']} threads; median of {config['rounds']} rounds after a warm-up, both trees "
        "in alternating order; the median, and the best run of each (the least disturbed on a shared machine). "
        "TTFT and completions in ms (after / before under 1: faster); decode in tok/s (over 1: faster).",
        "",
        "| model | case | before | after | after / before | best before | best after | best after / before |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for case, row in result.items():
            if case == "http_overhead_share":
                continue
            scale, unit = (1, "tok/s") if "decode" in case else (1000, "ms")
            m, b = row["median"], row["best"]
            lines.append(
                f"| {name} | {case} | {m['before'] * scale:.1f} {unit} | {m['after'] * scale:.1f} {unit} | "
                f"**{row['after_over_before']:.3f}** | {b['before'] * scale:.1f} | {b['after'] * scale:.1f} | "
                f"{row['best_after_over_before']:.3f} |"
            )
        share = result["http_overhead_share"]
        lines.append(
            f"| {name} | HTTP + SSE share of a {HTTP_TOKENS}-token completion | {100 * share['before']:.1f}% | "
            f"{100 * share['after']:.1f}% | | | | |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items(), strict=True):
        labels = [c for c in result if c != "http_overhead_share"]
        ax.barh(labels, [result[c]["after_over_before"] for c in labels], color="tab:blue")
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_title(f"{name}: after / before")
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.revisions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="a git revision of this repository (a commit, tag, HEAD~3)")
    parser.add_argument("--after", default=None, help="another revision to set against it (default: this working tree)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens of the decode cases")
    add_run_flags(parser)
    args = parser.parse_args(argv)
    sha, before = unpack(args.before)
    after_sha, after = unpack(args.after) if args.after else ("", ROOT)
    trees = {"before": before, "after": after}
    info = machine_info(args.threads)
    results = {name: bench_model(name, trees, args) for name in args.models}
    if args.after:
        label = after_sha[:12]
    else:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        label = head.strip() + (" + uncommitted changes" if dirty else "")
    config = {
        "before": sha[:12],
        "after": label,
        "rounds": args.rounds,
        "threads": args.threads,
        "tokens": args.tokens,
        "models": args.models,
    }
    results_file.write(
        args.out,
        "revisions",
        {"machine": info, "config": config, "models": results},
        markdown(results, info, config),
        lambda path: plot(results, path),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
