"""The cases bench.suite measures on one model, and the protocol it measures every case with.

Not run on its own (bench.api_pair uses Bench and singles too). bench_model loads every path of
bench.suite_paths for a model, then times TTFT at PROMPT_LENGTHS, single-stream decode, the HTTP
overhead at HTTP_TOKENS, SAMPLES samples of one prompt and CLIENTS concurrent clients; Bench.measure
runs a case: a discarded warm-up per path, then --repeats rounds in alternating order, each run after
a wait for a quiet machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from bench.decode import PROMPT
from bench.machine import Busy, wait_quiet, weight_bytes_per_token
from bench.paths import Run, optimum_folder
from bench.suite_paths import EngineDirect, Generate, LlamaCpp, Server, ggufs, hf_checkpoint

PROMPT_LENGTHS = (32, 512, 1536)
SAMPLES = (1, 4, 16, 64)  # llama.cpp's server with n slots: bench.samples
CLIENTS = (1, 4, 16)
HTTP_TOKENS = 128


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
            for label in list(paths) if round_ % 2 == 0 else list(reversed(paths)):
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
    return {
        "ttft_ms_median": statistics.median(r.ttft_s * 1e3 for r in runs),
        "decode_tok_s_median": statistics.median(r.decode_tok_s for r in runs) if runs[0].tokens > 1 else None,
        "total_s_median": statistics.median(r.total_s for r in runs),
        "runs": [asdict(r) for r in runs],
    }


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from server.engine import Engine

    repo, threads = args.repository, args.threads
    paths: dict[str, object] = {}
    missing: dict[str, str] = {}
    for label, model in (("engine int8", name), ("engine int4", f"{name}-int4"), ("engine gguf", f"{name}-gguf")):
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
    rss_by_export = {"int8": rss_loaded / 2**20}
    for precision in ("gguf", "int4"):  # what each other export holds once loaded, in a server of its own
        if (repo / f"{name}-{precision}" / "manifest.json").is_file():
            other = Server(repo, f"{name}-{precision}", threads)
            rss_by_export[precision] = other.process.rss_bytes()[0] / 2**20
            other.close()
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
    result: dict = {
        "missing": missing,
        "server_rss_mb_loaded": rss_loaded / 2**20,
        "server_rss_mb_by_export": rss_by_export,
        "weights_mb_per_token": {},
        "ttft": {},
        "samples": {},
        "clients": {},
    }
    for label in ("engine int8", "engine int4", "engine gguf"):
        if label in paths:
            onnx_file = paths[label].path.onnx_file  # type: ignore[attr-defined]
            result["weights_mb_per_token"][label] = weight_bytes_per_token(onnx_file) / 1e6

    for length in PROMPT_LENGTHS:
        raw = text_ids[:length]
        result["ttft"][str(length)] = bench.measure(
            f"TTFT@{length}",
            {label: (lambda p=p, label=label, raw=raw: p.single(ids_for(label, raw), 1)) for label, p in paths.items()},
            singles,
        )
    result["decode"] = bench.measure(
        "decode",
        {label: (lambda p=p, label=label: p.single(ids_for(label, prompt_ids), args.tokens)) for label, p in paths.items()},
        singles,
    )
    result["http"] = bench.measure(
        f"HTTP@{HTTP_TOKENS}",
        {label: (lambda p=paths[label]: p.single(prompt_ids, HTTP_TOKENS)) for label in ("engine int8", "server int8")},
        singles,
    )
    for n in SAMPLES:

        def timed(p, label: str, n: int = n) -> tuple[int, float]:
            start = time.perf_counter()
            tokens = p.samples(ids_for(label, prompt_ids), n, args.tokens)
            return tokens, time.perf_counter() - start

        result["samples"][str(n)] = bench.measure(
            f"n={n}",
            {
                label: (lambda p=p, label=label: timed(p, label))
                for label, p in paths.items()
                if label not in ("engine int4", "engine gguf")
            },
            lambda runs: {
                "aggregate_tok_s_median": statistics.median(t / s for t, s in runs),
                "runs": [{"tokens": t, "seconds": s} for t, s in runs],
            },
        )
    client_prompt = text_ids[:128]
    for clients in CLIENTS:
        result["clients"][str(clients)] = bench.measure(
            f"clients={clients}",
            {"server int8": lambda c=clients: server.clients(client_prompt, c, args.requests, args.tokens)},
            lambda runs: {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "errors"}
            | {"errors": sum(r["errors"] for r in runs), "runs": runs},
        )["server int8"]
    result["server_rss_mb_peak"] = server.process.rss_bytes()[1] / 2**20
    server.close()
    return result
