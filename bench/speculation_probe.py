"""What speculative decoding could buy on this machine, before it is built (issue 26): the two numbers
that decide it, per bundled model.

    .venv/bin/python -m bench.speculation_probe [--models smollm2-135m gemma3-270m] [--prompts 24]

- Verify cost: one step over T new tokens (the row's next token and T - 1 drafts, all their logits)
  against a one-token step, on a 1.4k-token editor prompt; a verify step yields 1 + (accepted drafts)
  tokens for that cost.
- Acceptance: on editor prompts (real files cut at word ends, as `eval editor` types them), the greedy
  continuation of 24 tokens, and at each of its steps prompt lookup's draft of K tokens
  (server/engine/drafts.py) over the prompt and the tokens so far: how many of the draft's first tokens
  equal what greedy decoding then produced (what a verify step would accept).
From both: the expected tokens per verify step, and the speed-up over one-token steps it would give.
- Measured: the engine's own speculative step (`speculative`, 3-token drafts) against plain decoding on
  the same prompts, greedy, 24 tokens: the time of each generation and whether the text is identical
  (a verify step computes the row's positions in multi-row tiles, whose sums may differ by a few ULPs
  from a one-token step's).
Results: bench/results/speculation_probe.{json,md,png}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from bench import results as results_file
from bench.machine import machine_info, wait_quiet
from bench.paths import ROOT
from bench.speculation import gap_where_they_part
from eval.editor_sessions import default_files, read_files
from server.engine import Delta, Engine, SamplingParams, prompt_lookup

STEPS = (1, 2, 4, 8)  # new tokens per step: the next token and up to 7 drafts
CONTINUATION = 24  # tokens, as an editor's completion (bench.editor's max_tokens)
PROMPT_CHARS = 5000  # ~1.4k tokens of the file before the cursor, as bench.editor sends


def verify_cost(engine: Engine, ids: list[int], rounds: int = 12) -> dict[int, float]:
    """Median ms of a step over T new tokens on this prompt's cache, for each T in STEPS."""
    logits, cache = engine.runner.prefill(ids)
    token = int(logits[-1].argmax())
    out = {}
    for width in STEPS:
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            _, cache = engine.runner.forward(np.asarray([[token] * width]), cache, keep=width)
            times.append(time.perf_counter() - start)
            cache = cache.rewind([width])
        out[width] = 1000 * statistics.median(times[2:])
    return out


def acceptance(engine: Engine, ids: list[int], k: int) -> list[int]:
    """At each step of the greedy continuation, how many of prompt lookup's k draft tokens it would accept."""
    logits, cache = engine.runner.prefill(ids)
    generated = [int(logits[-1].argmax())]
    for _ in range(CONTINUATION - 1):
        step, cache = engine.runner.decode(generated[-1:], cache)
        generated.append(int(step[0].argmax()))
    accepted = []
    for at in range(1, CONTINUATION):  # the draft made after `at` tokens, checked against the next ones
        draft = prompt_lookup([*ids, *generated[:at]], k)
        actual = generated[at : at + len(draft)]
        accepted.append(next((i for i, (d, a) in enumerate(zip(draft, actual, strict=False)) if d != a), len(actual)))
    return accepted


def measured(engine: Engine, prompts: list[list[int]]) -> dict:
    """Greedy generations with and without speculation, alternating: summed time, identical texts, and
    for each difference the plain path's top-2 logit gap at the first token where the two part."""
    totals, same, gaps = {False: 0.0, True: 0.0}, 0, []
    for ids in prompts:
        texts = {}
        for speculative in (False, True):
            params = SamplingParams(max_tokens=CONTINUATION, temperature=0.0, ignore_eos=True, speculative=speculative)
            start = time.perf_counter()
            events = list(engine.generate(engine.prompter.prepare(ids, CONTINUATION), params))
            totals[speculative] += time.perf_counter() - start
            texts[speculative] = "".join(e.text for e in events if isinstance(e, Delta))
        same += texts[False] == texts[True]
        if texts[False] != texts[True]:
            gaps.append(gap_where_they_part(engine, engine.prompter.prepare(ids, CONTINUATION).ids, texts[True], CONTINUATION))
    return {
        "plain_s": totals[False],
        "speculative_s": totals[True],
        "speedup": totals[False] / totals[True],
        "identical": same,
        "prompts": len(prompts),
        "top2_gaps_at_first_difference": gaps,
    }


def editor_prompts(engine: Engine, count: int) -> list[list[int]]:
    """Real files cut at `count` word ends spread over each, the PROMPT_CHARS before the cursor."""
    texts = list(read_files(default_files(), log=lambda _line: None).values())
    prompts = []
    for text in texts:
        ends = [i for i in range(PROMPT_CHARS // 2, len(text)) if text[i] == " " and text[i - 1].isalnum()]
        for end in ends[:: max(1, len(ends) // max(1, count // len(texts)))][: count // len(texts)]:
            prompts.append(engine.prompter.encode(text[max(0, end - PROMPT_CHARS) : end + 1]))
    return prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    info = machine_info(args.threads)
    waited = wait_quiet(60)
    models = {}
    for name in args.models:
        engine = Engine.load(args.repository, name, args.threads)
        prompts = editor_prompts(engine, args.prompts)
        cost = verify_cost(engine, prompts[0])
        per_k = {}
        for width in STEPS[1:]:
            counts = [n for ids in prompts for n in acceptance(engine, ids, width - 1)]
            mean = float(np.mean(counts))
            per_k[width] = {
                "mean_accepted": mean,
                "share_with_any": float(np.mean([n > 0 for n in counts])),
                "speedup": (1 + mean) / (cost[width] / cost[1]),
            }
            print(f"[{name}] T={width}: {mean:.2f} accepted drafts per step over {len(counts)} steps", flush=True)
        run = measured(engine, prompts)
        print(f"[{name}] measured: {run['speedup']:.2f}x, {run['identical']}/{run['prompts']} identical", flush=True)
        models[name] = {"prompt_tokens": len(prompts[0]), "prompts": len(prompts), "verify_ms": cost, "by_step": per_k, "measured": run}
    lines = [
        f"Speculation probe: {info['cpu']}, {args.threads} threads (waited {waited:.0f} s for a quiet machine)",
        "",
        "| model | new tokens per step (T) | step ms (x one-token) | accepted drafts per step | steps with any | speed-up if verified |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in models.items():
        one = m["verify_ms"][1]
        lines.append(f"| {name} | 1 | {one:.1f} (1.00x) | - | - | 1.00x |")
        for width, k in m["by_step"].items():
            lines.append(
                f"| {name} | {width} | {m['verify_ms'][width]:.1f} ({m['verify_ms'][width] / one:.2f}x) | "
                f"{k['mean_accepted']:.2f} | {k['share_with_any']:.0%} | {k['speedup']:.2f}x |"
            )
    lines += [
        "",
        "| model | plain s | speculative s | speed-up (prefill included) | identical texts | top-2 gaps where they part |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {m['measured']['plain_s']:.2f} | {m['measured']['speculative_s']:.2f} | "
        f"{m['measured']['speedup']:.2f}x | {m['measured']['identical']}/{m['measured']['prompts']} | "
        f"{', '.join(f'{g:.3f}' for g in sorted(m['measured']['top2_gaps_at_first_difference']))} |"
        for name, m in models.items()
    ]
    lines += [
        "",
        f"Acceptance: prompt lookup (n-grams 4..2) on {args.prompts} editor prompts of ~1.4k tokens, greedy "
        f"continuations of {CONTINUATION} tokens; speed-up = (1 + accepted) / (step cost over a one-token step).",
    ]

    def plot(path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, m in models.items():
            ax.plot([1, *m["by_step"]], [1.0, *(k["speedup"] for k in m["by_step"].values())], marker="o", label=name)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xlabel("new tokens per verify step (T)")
        ax.set_ylabel("expected decode speed-up")
        ax.set_title(f"Prompt-lookup speculation, expected ({info['cpu']})", fontsize=9)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    results_file.write(args.out, "speculation_probe", {"machine": info, "models": models}, "\n".join(lines) + "\n", plot)


if __name__ == "__main__":
    main()
