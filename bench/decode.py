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
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.engine import Prompt

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache"
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


@dataclass
class Run:
    tokens: int  # generated tokens, the first one included
    ttft_s: float  # start -> first generated token
    total_s: float  # start -> generation finished
    others_cores: float = 0.0  # CPU the rest of the machine took meanwhile, in cores (noise gauge)
    waited_s: float = 0.0  # time spent waiting for a quiet machine before the run

    @property
    def decode_tok_s(self) -> float:
        # the tokens after the first, over the time after it: prefill excluded
        return (self.tokens - 1) / (self.total_s - self.ttft_s)


# --- the two paths ---


class EnginePath:
    def __init__(self, repository: Path, name: str, threads: int) -> None:
        from server.engine import Engine

        self.engine = Engine(repository, name, threads)
        self.onnx_file = repository / name / self.engine.manifest.onnx_file

    def prepare(self, text: str, tokens: int) -> Prompt:
        return self.engine.prompter.prepare(text, tokens)

    def run(self, prompt: Prompt, tokens: int, ignore_eos: bool = False) -> tuple[Run, str]:
        from server.engine import Delta, SamplingParams, Usage

        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=ignore_eos)
        pieces, first, usage = [], None, None
        start = time.perf_counter()
        for item in self.engine.generate(prompt, params):
            if isinstance(item, Delta):
                if first is None:
                    first = time.perf_counter()
                pieces.append(item.text)
            elif isinstance(item, Usage):
                usage = item
        end = time.perf_counter()
        assert first is not None and usage is not None
        return Run(usage.completion_tokens, first - start, end - start), "".join(pieces)


class OptimumPath:
    """ORTModelForCausalLM.generate on optimum's INT8 export, as a user would call it."""

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the engine's settings (server/engine/runner.py)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.model = ORTModelForCausalLM.from_pretrained(
            folder, session_options=options, provider="CPUExecutionProvider", local_files_only=True
        )
        self.onnx_file = folder / "model.onnx"

    def run(self, ids: list[int], tokens: int, torch_threads: int) -> tuple[Run, list[int]]:
        import torch

        torch.set_num_threads(torch_threads)
        clock = first_token_clock()
        input_ids = torch.tensor([ids], dtype=torch.int64)
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            num_beams=1,
            max_new_tokens=tokens,
            min_new_tokens=tokens,  # exactly `tokens`: no early EOS
            pad_token_id=self.model.generation_config.eos_token_id,
            streamer=clock,
        )
        end = time.perf_counter()
        new = out[0, len(ids) :].tolist()
        assert clock.at is not None
        return Run(len(new), clock.at - start, end - start), new


def first_token_clock():
    """A streamer for transformers' generate() that notes when the first new token comes (generate
    puts the prompt first, then each new token as it is chosen): `.at`, a perf_counter time."""
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.puts, self.at = 0, None

        def put(self, value) -> None:
            self.puts += 1
            if self.puts == 2:
                self.at = time.perf_counter()

        def end(self) -> None:
            pass

    return FirstToken()


# --- optimum's export, cached ---


def optimum_folder(name: str) -> Path:
    """bench/.cache/<name>-optimum-int8, exported from the bundled GGUF the first time (in a child
    process: Gemma's export peaks near 7 GB and leaves torch threads and heap behind)."""
    folder = CACHE / f"{name}-optimum-int8"
    if not (folder / ".complete").is_file():
        print(f"[{name}] exporting optimum's INT8 model to {folder} (once; cached)", flush=True)
        started = time.perf_counter()
        child = multiprocessing.get_context("spawn").Process(target=_export_optimum, args=(name, folder))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"[{name}] optimum export failed (exit {child.exitcode})")
        print(f"[{name}] optimum export done in {time.perf_counter() - started:.0f} s", flush=True)
    return folder


def _export_optimum(name: str, folder: Path) -> None:
    from server.models.catalog import lookup
    from server.models.gguf import import_gguf
    from server.models.optimum_export import export_optimum

    shutil.rmtree(folder, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=CACHE) as tmp:
        work = Path(tmp)
        hf_dir = import_gguf(lookup(name).locate_gguf(work), work / "hf")
        export_optimum(hf_dir, folder, dynamic_int8=True)
    (folder / ".complete").write_text("")


# --- measurement ---


class Busy:
    """CPU the rest of the machine took, in cores: other processes' busy time (/proc/stat less this
    process's own) plus steal (time the hypervisor gave our virtual CPUs to someone else)."""

    _HZ = os.sysconf("SC_CLK_TCK")

    def __init__(self) -> None:
        self._start = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        # cpu  user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = f[0] + f[1] + f[2] + f[5] + f[6]
        own = os.times()
        return busy / Busy._HZ, f[7] / Busy._HZ, own.user + own.system, time.perf_counter()

    def others(self) -> float:
        busy, steal, own, wall = self._now()
        b0, s0, o0, w0 = self._start
        return max(0.0, (busy - b0) - (own - o0) + (steal - s0)) / (wall - w0)


def wait_quiet(limit_s: float, below: float = 0.2, window_s: float = 0.5, windows: int = 2) -> float:
    """Wait (at most limit_s) until other processes used under `below` cores for `windows` windows in
    a row; returns the seconds waited. The machine is shared: a run during someone's test suite
    measures the test suite."""
    start, calm = time.perf_counter(), 0
    while calm < windows and time.perf_counter() - start < limit_s:
        gauge = Busy()
        time.sleep(window_s)
        calm = calm + 1 if gauge.others() < below else 0
    return time.perf_counter() - start


def weight_bytes_per_token(onnx_file: Path) -> int:
    """Bytes of initializers one decode step reads: all but those read only through Gather (embedding
    tables: one row per token). A table tied to the LM head is read whole, so it counts."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(onnx_file), load_external_data=False)
    consumers: dict[str, list] = {}
    graphs = [model.graph]
    while graphs:  # subgraphs too (If branches of merged decoders)
        graph = graphs.pop()
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
            graphs.extend(a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)

    def gathered_only(name: str) -> bool:
        # constant-folded reshapes (Transpose, Cast, ...) on the way to a Gather keep it row-wise
        uses = consumers.get(name, [])
        return bool(uses) and all(
            (node.op_type == "Gather" and node.input[0] == name)
            or (node.op_type in _FOLDED and gathered_only(node.output[0]))
            for node in uses
        )

    total = 0
    for init in model.graph.initializer:
        if not gathered_only(init.name):
            count = 1
            for dim in init.dims:
                count *= dim
            total += count * tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


_FOLDED = frozenset({"Transpose", "Cast", "Reshape", "Identity"})


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

    from server.engine.sampling import log_softmax
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
    print(f"[{name}] teacher-forced NLL, {len(nll_ids)} tokens of textwrap.py: engine {engine_nll:.3f}, "
          f"optimum {optimum_nll:.3f} nats/token", flush=True)

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


def machine_info(torch_default: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("onnxruntime", "optimum", "optimum-onnx", "transformers", "torch", "numpy", "tokenizers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch_default_threads": torch_default,
        "load_average_at_start": os.getloadavg(),
        "versions": versions,
    }


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
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ORT intra-op threads: the engine, and optimum but for its (ORT 1, torch 1) configuration")
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0,
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
        "tokens": args.tokens, "repeats": args.repeats, "threads": args.threads,
        "quiet_wait_s": args.quiet_wait, "prompt": PROMPT,
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
