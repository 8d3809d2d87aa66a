"""Every speed figure of the engine against its peers, in one process tree and one run.

    .venv/bin/python -m bench.suite [--models smollm2-135m gemma3-270m] [--repeats 3] [--tokens 64]

Paths, per bundled model (all on --threads cores, the same prompt ids):

- `engine int8`, `engine int4`: server.engine in this process on the model_repository exports;
- `server int8`: a `slipstream serve` child on 127.0.0.1, over HTTP through client.api (streaming);
- `optimum`: optimum's ORTModelForCausalLM.generate on its own INT8 export (bench.decode's, cached);
- `torch`: transformers' generate on the fp32 checkpoint imported from the GGUF (cached);
- `llama.cpp Q8_0`, `llama.cpp Q4`: llama-cpp-python on a Q8_0 GGUF requantised from the shipped one
  (cached) and on the shipped GGUF itself (SmolLM2 Q4_1, Gemma-3 Q4_K_M). Optional: without the
  package those rows say so.

Cases: TTFT at prompt lengths 32, 512 and 1536 tokens; single-stream greedy decode tok/s (EOS ignored,
exactly --tokens tokens); n = 1, 4, 16 samples of one prompt at temperature 0.8 (aggregate tok/s;
llama-cpp-python has no batch: its n samples run one after another); 1, 4 and 16 concurrent
streaming clients on the server (aggregate tok/s, p50/p95 latency); the HTTP + SSE overhead over the
engine for a 128-token completion; the server's RSS; the machine's memory bandwidth, against which
single-stream decode is set (the floor: bytes of weights per token / bandwidth). Protocol: a discarded
warm-up per path and case, then --repeats rounds in alternating order, each run after a wait for a
quiet machine. Results: bench/results/suite.{json,md,png}; the targets of issue 4 are checked at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from bench.decode import (
    CACHE,
    PROMPT,
    ROOT,
    Busy,
    EnginePath,
    Run,
    first_token_clock,
    machine_info,
    optimum_folder,
    wait_quiet,
    weight_bytes_per_token,
)

MODELS = ("smollm2-135m", "gemma3-270m")
PROMPT_LENGTHS = (32, 512, 1536)
SAMPLES = (1, 4, 16)
CLIENTS = (1, 4, 16)
HTTP_TOKENS = 128
TEMPERATURE = 0.8


# --- the machine ---


def memory_bandwidth_gb_s(threads: int, mb: int = 512, repeats: int = 7) -> float:
    """Best copy bandwidth (bytes read + bytes written per second) with `threads` threads each copying
    its own share of `mb` MB: numpy releases the GIL for the copy, as ONNX Runtime's threads read weights."""
    size = mb * 2**20 // 8 // threads
    sources = [np.ones(size) for _ in range(threads)]
    targets = [np.empty(size) for _ in range(threads)]
    best = float("inf")
    for _ in range(repeats):
        barrier = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=lambda s=s, t=t, b=barrier: (b.wait(), np.copyto(t, s)))
                   for s, t in zip(sources, targets, strict=True)]
        for w in workers:
            w.start()
        start = time.perf_counter()
        barrier.wait()
        for w in workers:
            w.join()
        best = min(best, time.perf_counter() - start)
    return 2 * size * 8 * threads / best / 1e9


# --- the paths ---


class Generate:
    """transformers' generate() on a model that has it (optimum's ORTModelForCausalLM, torch's)."""

    def __init__(self, model, torch_threads: int) -> None:
        self.model, self.torch_threads = model, torch_threads

    def _generate(self, ids: list[int], tokens: int, n: int, sample: bool, streamer=None):
        import torch

        torch.set_num_threads(self.torch_threads)
        input_ids = torch.tensor([ids], dtype=torch.int64)
        options = dict(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0) if sample else dict(do_sample=False)
        with torch.inference_mode():
            return self.model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
                min_new_tokens=tokens, num_return_sequences=n, num_beams=1, streamer=streamer,
                pad_token_id=self.model.generation_config.eos_token_id, **options)

    def single(self, ids: list[int], tokens: int) -> Run:
        clock = first_token_clock()
        start = time.perf_counter()
        out = self._generate(ids, tokens, 1, False, clock)
        end = time.perf_counter()
        return Run(out.shape[1] - len(ids), (clock.at or end) - start, end - start)

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        out = self._generate(ids, tokens, n, True)
        return n * (out.shape[1] - len(ids))


class EngineDirect:
    def __init__(self, repository: Path, name: str, threads: int) -> None:
        self.path = EnginePath(repository, name, threads)

    def single(self, ids: list[int], tokens: int) -> Run:
        return self.path.run(self.path.engine.prompter.prepare(ids, tokens), tokens, ignore_eos=True)[0]

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        from server.engine import SamplingParams, Usage

        params = SamplingParams(max_tokens=tokens, temperature=TEMPERATURE, n=n, seed=0, ignore_eos=True)
        usage = [e for e in self.path.engine.generate(self.path.engine.prompter.prepare(ids, tokens), params) if isinstance(e, Usage)]
        return usage[0].completion_tokens


class Server:
    """`slipstream serve` in a child process; the client sends the prompt as token ids (the server
    adds the model's prefix, as the engine's prepare does)."""

    def __init__(self, repository: Path, name: str, threads: int, env: dict[str, str] | None = None) -> None:
        from client.api import Client
        from testkit.server_process import ServerProcess

        self.process = ServerProcess(repository, [name], env=env, threads=threads)
        self.process.wait_ready(timeout=600)
        self.url, self.name = self.process.url, name
        self.client = Client(self.url, timeout=600)

    def single(self, ids: list[int], tokens: int) -> Run:
        timing = self.client.timed(ids, model=self.name, max_tokens=tokens, temperature=0, ignore_eos=True)
        if timing.completion_tokens != tokens:
            raise RuntimeError(f"the server generated {timing.completion_tokens} tokens, not {tokens}")
        # a first token whose text is held back (half a character) arrives with the next: the total then
        return Run(tokens, timing.ttft_s if timing.ttft_s is not None else timing.total_s, timing.total_s)

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        reply = self.client.complete(ids, model=self.name, max_tokens=tokens, temperature=TEMPERATURE, n=n, seed=0,
                                     ignore_eos=True)
        return reply["usage"]["completion_tokens"]

    def clients(self, ids: list[int], clients: int, requests: int, tokens: int) -> dict:
        """`clients` concurrent streaming clients, each sending `requests` requests one after another."""
        from client.api import AsyncClient

        async def client_loop(index: int) -> list:
            async with AsyncClient(self.url, timeout=600) as client:
                return [await client.timed(ids, model=self.name, max_tokens=tokens, temperature=TEMPERATURE,
                                           seed=index * requests + r, ignore_eos=True) for r in range(requests)]

        async def everyone() -> list:
            return await asyncio.gather(*(client_loop(i) for i in range(clients)))

        start = time.perf_counter()
        timings = [t for per_client in asyncio.run(everyone()) for t in per_client]
        wall = time.perf_counter() - start
        generated = sum(t.completion_tokens or 0 for t in timings)
        latency = sorted(t.total_s for t in timings)
        ttft = sorted(t.ttft_s for t in timings if t.ttft_s is not None)
        return {"requests": len(timings), "tokens": generated, "wall_s": wall, "aggregate_tok_s": generated / wall,
                "latency_p50_s": _percentile(latency, 50), "latency_p95_s": _percentile(latency, 95),
                "ttft_p50_s": _percentile(ttft, 50), "ttft_p95_s": _percentile(ttft, 95),
                "errors": sum(1 for t in timings if t.finish_reason is None)}

    def close(self) -> None:
        self.client.close()
        self.process.stop()


class LlamaCpp:
    def __init__(self, gguf: Path, threads: int, context: int) -> None:
        from bench.llamacpp import LlamaCppPath

        self.path = LlamaCppPath(gguf, threads, context)

    def single(self, ids: list[int], tokens: int) -> Run:
        return self.path.run(ids, tokens)[0]

    def samples(self, ids: list[int], n: int, tokens: int) -> int:
        # llama-cpp-python decodes one sequence at a time: n samples are n generations
        model, total = self.path.model, 0
        for _ in range(n):
            model.reset()
            for count, _token in enumerate(model.generate(ids, temp=TEMPERATURE, top_k=0, top_p=1.0, repeat_penalty=1.0,
                                                          reset=True), start=1):
                if count == tokens:
                    break
            total += count
        return total


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --- cached inputs for the peers ---


def hf_checkpoint(name: str) -> Path:
    """The fp32 transformers checkpoint of the bundled GGUF (bench/.cache/<name>-hf), imported once."""
    from server.models.catalog import lookup
    from server.models.gguf import import_gguf

    folder = CACHE / f"{name}-hf"
    if not (folder / ".complete").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            import_gguf(lookup(name).locate_gguf(Path(tmp)), folder)
        (folder / ".complete").write_text("")
    return folder


def ggufs(name: str) -> dict[str, Path]:
    """The shipped GGUF (Q4) and a Q8_0 requantised from it with llama.cpp's own quantiser, cached."""
    import ctypes

    import llama_cpp

    from server.models.catalog import lookup

    CACHE.mkdir(parents=True, exist_ok=True)
    shipped = CACHE / f"{name}-shipped.gguf"
    if not shipped.is_file():
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            shutil.copyfile(lookup(name).locate_gguf(Path(tmp)), shipped)
    q8 = CACHE / f"{name}-q8_0.gguf"
    if not q8.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        partial = q8.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(shipped).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not requantise {shipped} to Q8_0")
        partial.rename(q8)
    return {"llama.cpp Q8_0": q8, "llama.cpp Q4": shipped}


# --- the protocol ---


class Bench:
    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args

    def measure(self, case: str, paths: dict[str, Callable[[], object]], summarise: Callable[[list], dict]) -> dict:
        """A discarded warm-up per path, then --repeats rounds in alternating order; each run after a
        wait for a quiet machine, with the CPU others took meanwhile recorded."""
        results: dict[str, list] = {label: [] for label in paths}
        others: dict[str, list[float]] = {label: [] for label in paths}
        for run in paths.values():
            gc.collect()
            run()
        for round_ in range(self.args.repeats):
            for label in (list(paths) if round_ % 2 == 0 else list(reversed(paths))):
                gc.collect()
                wait_quiet(self.args.quiet_wait)
                gauge = Busy()
                results[label].append(paths[label]())
                others[label].append(gauge.others())
        out = {}
        for label, values in results.items():
            out[label] = summarise(values) | {"others_cores_median": statistics.median(others[label])}
            shown = ", ".join(f"{k} {v:.4g}" for k, v in out[label].items() if isinstance(v, float))
            print(f"[{self.name}] {case:<14} {label:<15} {shown}", flush=True)
        return out


def singles(runs: list[Run]) -> dict:
    return {"ttft_ms_median": statistics.median(r.ttft_s * 1e3 for r in runs),
            "decode_tok_s_median": statistics.median(r.decode_tok_s for r in runs) if runs[0].tokens > 1 else None,
            "total_s_median": statistics.median(r.total_s for r in runs),
            "runs": [asdict(r) for r in runs]}


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from server.engine import Engine

    repo, threads = args.repository, args.threads
    paths: dict[str, object] = {}
    missing: dict[str, str] = {}
    for label, model in (("engine int8", name), ("engine int4", f"{name}-int4")):
        if (repo / model / "manifest.json").is_file():
            paths[label] = EngineDirect(repo, model, threads)
        else:
            missing[label] = f"not exported: slipstream export {name} --precision {label.split()[1]}"
    if "engine int8" not in paths:
        raise SystemExit(f"export {name} first (slipstream export {name})")
    engine: Engine = paths["engine int8"].path.engine  # type: ignore[attr-defined]
    text_ids = (engine.prompter.encode(Path(textwrap.__file__).read_text()) * 4)[: max(PROMPT_LENGTHS)]
    prompt_ids = engine.prompter.encode(PROMPT)
    prefix = engine.manifest.prompt_prefix_ids

    print(f"[{name}] starting the server and loading the peers", flush=True)
    server = Server(repo, name, threads)
    paths["server int8"] = server
    rss_loaded = server.process.rss_bytes()[0]
    import onnxruntime as ort
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoModelForCausalLM

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    folder = optimum_folder(name)
    paths["optimum"] = Generate(ORTModelForCausalLM.from_pretrained(folder, session_options=options, local_files_only=True), 1)
    paths["torch"] = Generate(AutoModelForCausalLM.from_pretrained(hf_checkpoint(name), torch_dtype="float32").eval(), threads)
    try:
        for label, gguf in ggufs(name).items():
            paths[label] = LlamaCpp(gguf, threads, context=max(PROMPT_LENGTHS) + len(prefix) + 2 * HTTP_TOKENS)
    except ImportError:
        for label in ("llama.cpp Q8_0", "llama.cpp Q4"):
            missing[label] = "llama-cpp-python is not installed (pip install llama-cpp-python==0.3.36: a source build)"
    for label, why in missing.items():
        print(f"[{name}] {label}: skipped, {why}", flush=True)

    def ids_for(label: str, raw: list[int]) -> list[int]:
        # the engine and the server add the model's prompt prefix themselves; the peers get it here
        return raw if label.startswith(("engine", "server")) else prefix + raw

    bench = Bench(name, args)
    result: dict = {"missing": missing, "server_rss_mb_loaded": rss_loaded / 2**20,
                    "weights_mb_per_token": {}, "ttft": {}, "samples": {}, "clients": {}}
    for label in ("engine int8", "engine int4"):
        if label in paths:
            onnx_file = paths[label].path.onnx_file  # type: ignore[attr-defined]
            result["weights_mb_per_token"][label] = weight_bytes_per_token(onnx_file) / 1e6

    for length in PROMPT_LENGTHS:
        raw = text_ids[:length]
        result["ttft"][str(length)] = bench.measure(
            f"TTFT@{length}", {label: (lambda p=p, label=label, raw=raw: p.single(ids_for(label, raw), 1))
                               for label, p in paths.items()}, singles)
    result["decode"] = bench.measure(
        "decode", {label: (lambda p=p, label=label: p.single(ids_for(label, prompt_ids), args.tokens))
                   for label, p in paths.items()}, singles)
    result["http"] = bench.measure(
        f"HTTP@{HTTP_TOKENS}", {label: (lambda p=paths[label]: p.single(prompt_ids, HTTP_TOKENS))
                                for label in ("engine int8", "server int8")}, singles)
    for n in SAMPLES:
        def timed(p, label: str, n: int = n) -> tuple[int, float]:
            start = time.perf_counter()
            tokens = p.samples(ids_for(label, prompt_ids), n, args.tokens)
            return tokens, time.perf_counter() - start

        result["samples"][str(n)] = bench.measure(
            f"n={n}", {label: (lambda p=p, label=label: timed(p, label))
                       for label, p in paths.items() if label != "engine int4"},
            lambda runs: {"aggregate_tok_s_median": statistics.median(t / s for t, s in runs),
                          "runs": [{"tokens": t, "seconds": s} for t, s in runs]})
    client_prompt = text_ids[:128]
    for clients in CLIENTS:
        result["clients"][str(clients)] = bench.measure(
            f"clients={clients}", {"server int8": lambda c=clients: server.clients(client_prompt, c, args.requests, args.tokens)},
            lambda runs: {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
            | {"errors": sum(r["errors"] for r in runs), "runs": runs})["server int8"]
    result["server_rss_mb_peak"] = server.process.rss_bytes()[1] / 2**20
    server.close()
    return result


# --- the report ---


TARGETS = (  # (key, what, minimum (or maximum when the name says "at most"))
    ("int8_over_llama_q8", "decode: engine int8 / llama.cpp Q8_0", 1.2),
    ("int4_over_llama_q4", "decode: engine int4 / llama.cpp Q4", 1.5),
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

    floor = bandwidth * 1e3 / model["weights_mb_per_token"]["engine int8"]  # tok/s if only weights moved
    ttft = model["ttft"]["512"]
    http = model["http"]
    return {
        "int8_over_llama_q8": div(decode("engine int8"), decode("llama.cpp Q8_0")),
        "int4_over_llama_q4": div(decode("engine int4"), decode("llama.cpp Q4")),
        "int8_over_optimum": div(decode("engine int8"), decode("optimum")),
        "int8_of_bandwidth_floor": div(decode("engine int8"), floor),
        "ttft512_llama_over_int8": div((ttft.get("llama.cpp Q8_0") or {}).get("ttft_ms_median"),
                                       ttft["engine int8"]["ttft_ms_median"]),
        "n16_over_n1": div(model["samples"]["16"]["engine int8"]["aggregate_tok_s_median"],
                           model["samples"]["1"]["engine int8"]["aggregate_tok_s_median"]),
        "clients16_over_clients1": div(model["clients"]["16"]["aggregate_tok_s"], model["clients"]["1"]["aggregate_tok_s"]),
        "http_overhead_at_most": 1 - http["engine int8"]["total_s_median"] / http["server int8"]["total_s_median"],
        "rss_mb_at_most": model["server_rss_mb_loaded"] if name == RSS_TARGET_MODEL else None,
        "bandwidth_floor_tok_s": floor,
    }


def markdown(results: dict, info: dict, args: argparse.Namespace) -> str:
    lines = [f"bench.suite: {args.threads} threads, {args.repeats} rounds, {args.tokens} new tokens; {info['cpu']}, "
             f"{info['cores']} cores; memory bandwidth {info['bandwidth_gb_s']:.1f} GB/s (copy); {info['date']}.", ""]
    for name, model in results.items():
        lines += [f"## {name}", ""]
        labels = list(model["decode"])
        lines += ["| path | decode tok/s | " + " | ".join(f"TTFT@{n} ms" for n in PROMPT_LENGTHS) + " | "
                  + " | ".join(f"n={n} tok/s" for n in SAMPLES) + " |", "|---" * (2 + len(PROMPT_LENGTHS) + len(SAMPLES)) + "|"]
        for label in labels:
            cells = [_fmt(model["decode"][label]["decode_tok_s_median"])]
            cells += [_fmt(model["ttft"][str(n)][label]["ttft_ms_median"]) for n in PROMPT_LENGTHS]
            cells += [_fmt((model["samples"][str(n)].get(label) or {}).get("aggregate_tok_s_median")) for n in SAMPLES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for label, why in model["missing"].items():
            lines.append(f"| {label} | {why} |")
        lines += ["", "Ratios of the engine (int8 unless named) over each peer, same run:", "",
                  "| peer | decode | TTFT@32 | TTFT@512 | TTFT@1536 | n=16 |", "|---|---|---|---|---|---|"]
        for peer in labels:
            if peer.startswith("engine"):
                continue
            row = [_ratio(model["decode"]["engine int8"]["decode_tok_s_median"], model["decode"][peer]["decode_tok_s_median"])]
            row += [_ratio(model["ttft"][str(n)][peer]["ttft_ms_median"], model["ttft"][str(n)]["engine int8"]["ttft_ms_median"])
                    for n in PROMPT_LENGTHS]
            n16 = model["samples"]["16"]
            row.append(_ratio(n16["engine int8"]["aggregate_tok_s_median"], (n16.get(peer) or {}).get("aggregate_tok_s_median")))
            lines.append(f"| {peer} | " + " | ".join(row) + " |")
        lines += ["", "Concurrent streaming clients on the server (temperature 0.8, 128-token prompt):", "",
                  "| clients | aggregate tok/s | latency p50 s | latency p95 s | TTFT p50 s | TTFT p95 s | errors |",
                  "|---|---|---|---|---|---|---|"]
        for c in CLIENTS:
            r = model["clients"][str(c)]
            lines.append(f"| {c} | {r['aggregate_tok_s']:.1f} | {r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | "
                         f"{r['ttft_p50_s']:.3f} | {r['ttft_p95_s']:.3f} | {r['errors']} |")
        lines += ["", "Targets (issue 4):", "", "| target | measured | goal | met |", "|---|---|---|---|"]
        measured = model["ratios"]
        for key, what, goal in TARGETS:
            value = measured.get(key)
            at_most = key.endswith("at_most")
            met = None if value is None else (value <= goal if at_most else value >= goal)
            lines.append(f"| {what} | {_fmt(value, 3)} | {'<=' if at_most else '>='} {goal} | "
                         f"{'n/a' if met is None else ('yes' if met else '**no**')} |")
        lines += ["", f"Bandwidth floor for engine int8: {measured['bandwidth_floor_tok_s']:.0f} tok/s "
                  f"({model['weights_mb_per_token']['engine int8']:.0f} MB of weights per token); server RSS "
                  f"{model['server_rss_mb_loaded']:.0f} MB loaded, {model['server_rss_mb_peak']:.0f} MB peak.", ""]
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


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every server benchmark shares: clients' requests, threads, quiet wait, where."""
    parser.add_argument("--requests", type=int, default=2, help="requests each concurrent client sends")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quiet-wait", type=float, default=10.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request (decode, samples, clients)")
    add_run_flags(parser)
    args = parser.parse_args(argv)

    info = machine_info(args.threads)
    info["bandwidth_gb_s"] = memory_bandwidth_gb_s(args.threads)
    print(f"memory bandwidth: {info['bandwidth_gb_s']:.1f} GB/s (copy, {args.threads} threads)", flush=True)
    results = {}
    for name in args.models:
        results[name] = bench_model(name, args)
        results[name]["ratios"] = ratios(results[name], info["bandwidth_gb_s"], name)
    args.out.mkdir(parents=True, exist_ok=True)
    config = vars(args) | {"repository": str(args.repository), "out": str(args.out)}
    (args.out / "suite.json").write_text(json.dumps({"machine": info, "config": config, "models": results}, indent=2) + "\n")
    text = markdown(results, info, args)
    (args.out / "suite.md").write_text(text)
    plot(results, args.out / "suite.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
