"""Why a verify step's numbers are not a one-token step's on the bundled int8 graphs, on this CPU (issue 26):

    .venv/bin/python -m bench.row_layout_probe [--models smollm2-135m gemma3-270m]

- MatMulNBits (int8 weights, accuracy_level 4: activations quantised to int8 per block) on one of the
  model's own weights: for M = 1..8 rows, whether each row's output has the bits it has alone ("1"), or
  those it has in a pair with any other row ("P"), or neither ("?"). On an AVX2 EPYC: rows go in pairs
  through one kernel and an odd last row through another ("PP1" at M = 3).
- The whole graph: the largest logit difference between a one-token step and the same position in a
  two-token step (the step a verify makes), and between a two-token and a four-token step.
- The batch: greedy n = 3 rows of one prompt, whether each row's text is the text of n = 1 (the odd
  third row computes alone, the first two in a pair).
Results: bench/results/row_layout.{json,md,png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from bench import results as results_file
from bench.machine import machine_info
from bench.paths import ROOT
from server.engine import Delta, Engine, SamplingParams
from server.models.store import model_dir


def matmul_rows(onnx_path: Path, threads: int, rows: int = 8) -> dict[int, str]:
    model = onnx.load(str(onnx_path))
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    weights = {i.name: i for i in model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n = attrs["K"], attrs["N"]
    alone = helper.make_node("MatMulNBits", ["A", *node.input[1:]], ["Y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [alone],
        "one_matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        [weights[x] for x in node.input[1:] if x],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, ir_version=10, opset_imports=opsets).SerializeToString(), options)
    x = np.random.default_rng(0).standard_normal((rows + 1, k)).astype(np.float32)

    def run(a: np.ndarray) -> np.ndarray:
        return session.run(None, {"A": a})[0]

    single = [run(x[i : i + 1])[0] for i in range(rows)]
    paired = [run(x[[i, i + 1]])[0] for i in range(rows)]
    out = {}
    for m in range(1, rows + 1):
        y = run(x[:m])
        out[m] = "".join("1" if np.array_equal(y[i], single[i]) else "P" if np.array_equal(y[i], paired[i]) else "?" for i in range(m))
    return out


def step_differences(engine: Engine, ids: list[int]) -> dict[str, float]:
    logits, cache = engine.runner.prefill(ids)
    token = int(logits[-1].argmax())
    one, cache = engine.runner.forward(np.asarray([[token]]), cache, keep=1)
    two, cache = engine.runner.forward(np.asarray([[token, token]]), cache.rewind([1]), keep=2)
    four, _ = engine.runner.forward(np.asarray([[token] * 4]), cache.rewind([2]), keep=4)
    return {
        "one_vs_two": float(np.abs(one[0, 0] - two[0, 0]).max()),
        "two_vs_four": float(np.abs(two[0, :2] - four[0, :2]).max()),
    }


def batch_rows(engine: Engine, prompts: list[str]) -> list[list[bool]]:
    same = []
    for text in prompts:
        prompt = engine.prompter.prepare(text, 32)
        texts = {}
        for n in (1, 3):
            out = [""] * n
            for event in engine.generate(prompt, SamplingParams(max_tokens=32, temperature=0.0, n=n, ignore_eos=True)):
                if isinstance(event, Delta):
                    out[event.index] += event.text
            texts[n] = out
        same.append([texts[1][0] == t for t in texts[3]])
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    info = machine_info(args.threads)
    source = (ROOT / "server" / "engine" / "engine.py").read_text()
    prompts = [source[: 1000 * k] for k in range(1, 9)]
    models = {}
    for name in args.models:
        engine = Engine.load(args.repository, name, args.threads)
        path = model_dir(args.repository, name) / engine.manifest.onnx_file
        models[name] = {
            "matmul_rows": matmul_rows(path, args.threads),
            "steps": step_differences(engine, engine.prompter.prepare(prompts[2], 16).ids),
            "batch_rows_same_as_alone": batch_rows(engine, prompts),
        }
        print(f"[{name}] {models[name]['matmul_rows']} {models[name]['steps']}", flush=True)
    lines = [f"Row layouts: {info['cpu']}, {args.threads} threads", ""]
    lines += ["| model | MatMulNBits rows, M = 1..8 (1: as alone, P: as in a pair) | one- vs two-token step | two- vs four-token |"]
    lines += ["|---|---|---|---|"]
    for name, m in models.items():
        pattern = " ".join(m["matmul_rows"].values())
        lines.append(f"| {name} | {pattern} | {m['steps']['one_vs_two']:.3f} | {m['steps']['two_vs_four']:.3f} |")
    lines += ["", "| model | greedy n = 3: rows whose text is the text alone, per prompt |", "|---|---|"]
    for name, m in models.items():
        lines.append(f"| {name} | {' '.join(''.join('y' if s else 'n' for s in row) for row in m['batch_rows_same_as_alone'])} |")

    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(models)
        results_file.side_by_side(
            ax,
            names,
            {
                "one- vs two-token step": [models[n]["steps"]["one_vs_two"] for n in names],
                "two- vs four-token step": [models[n]["steps"]["two_vs_four"] for n in names],
            },
            "largest logit difference",
        )
        ax.set_title(f"The same position computed in two layouts ({info['cpu']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    results_file.write(args.out, "row_layout", {"machine": info, "models": models}, "\n".join(lines) + "\n", plot)


if __name__ == "__main__":
    main()
