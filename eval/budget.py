"""pass@k under a fixed compute or time budget (Hassid, Remez et al. 2024, "The Larger the Better?").

    pass_flops@f = pass@k, k = max{k' : flops(k') <= f};   pass_time@t likewise with time(k').

Costs of one problem's k samples, per model, from the run's own records (averages over its samples):

    flops(k) = 2 · N · (P + k · G)        time(k) = P / prefill_tok_s + k · G / decode_tok_s

N: the model's parameters (the server's /v1/models, tied weights once; --parameters where a server does
not say); P: prompt tokens per problem (usage.prompt_tokens), processed once since the k samples share
one prefill (as our server does: n samples copy one prompt's KV cache); G: generated tokens per
sample. k is whole; a budget below one sample buys k = 0, which scores 0; k stops at the samples the
run has (a budget that would buy more is marked, never extrapolated). Rates come from the server
itself (measure_rates): prefill tokens/s from one-token completions of the run's prompts, decode
tokens/s as the best aggregate over batch sizes (n samples of one prompt in one request), i.e. batch
throughput, not one request's latency. Budgets are on a log scale in units of the cheapest model's
one-sample cost.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from client.api import AsyncClient
from eval import passk
from eval.runs import HumanEvalRun, problems_of

BATCH_SIZES = (1, 2, 4, 8, 16)
MEASURE_TOKENS = 128
BUDGET_STEPS_PER_DOUBLING = 2


@dataclass
class Rates:
    prefill_tok_s: float
    decode_tok_s: float  # at the best batch size
    best_batch: int
    by_batch: dict[int, float] = field(default_factory=dict)  # batch -> aggregate decode tok/s


@dataclass
class ModelCost:
    run: str
    model: str
    temperature: float
    parameters: int
    prompt_tokens: float  # P, per problem
    generated_tokens: float  # G, per sample
    samples_per_problem: int
    rates: Rates | None

    def flops(self, k: int) -> float:
        return 0.0 if k == 0 else 2.0 * self.parameters * (self.prompt_tokens + k * self.generated_tokens)

    def seconds(self, k: int) -> float:
        if k == 0:
            return 0.0
        if self.rates is None:
            raise ValueError(f"{self.run}: no measured rates, so no time budget")
        return self.prompt_tokens / self.rates.prefill_tok_s + k * self.generated_tokens / self.rates.decode_tok_s


@dataclass
class Curve:
    run: str
    axis: str  # "flops" or "seconds"
    budgets: list[float]  # in the axis' unit
    units: list[float]  # the same in units of the cheapest model's one-sample cost
    k: list[int]
    score: list[float]
    capped: list[bool]  # the budget would buy more samples than the run has


def costs_of(run: HumanEvalRun, parameters: int, rates: Rates | None) -> ModelCost:
    problems = run.by_problem()
    prompts = [s[0]["prompt_tokens"] for s in problems.values() if s[0].get("prompt_tokens") is not None]
    if len(prompts) < len(problems):
        raise ValueError(f"{run.label}: samples without prompt_tokens (the server sent no usage): no FLOPs count")
    generated = [s["completion_tokens"] for s in run.samples]
    return ModelCost(
        run.label,
        run.model,
        run.temperature,
        parameters,
        float(np.mean(prompts)),
        float(np.mean(generated)),
        min(len(s) for s in problems.values()),
        rates,
    )


K_LIMITS = ("half", "all")  # how far k goes: half the samples drawn (the paper), or all of them


def pass_at_budget(run: HumanEvalRun, cost: Callable[[int], float], budget: float, n: int) -> tuple[int, float]:
    """(k, pass@k) for the largest k whose cost fits the budget; k = 0 scores 0."""
    k = passk.largest_k(cost, budget, n)
    if k == 0:
        return 0, 0.0
    counts = {t: (len(s), sum(x["passed"] for x in s)) for t, s in run.by_problem().items()}
    return k, passk.benchmark_pass_at_k(counts, [k])[k]


def k_max(samples: int, k_limit: str) -> int:
    """The largest k a run of `samples` samples per problem is scored at: Hassid et al. estimate pass@k
    for k up to half the samples drawn (the unbiased estimator keeps a margin there), "all" lets k
    reach them; a run of one sample (greedy) is scored at k = 1 either way."""
    if k_limit not in K_LIMITS:
        raise ValueError(f"k_limit is one of {K_LIMITS}, not {k_limit!r}")
    return samples if k_limit == "all" else max(1, samples // 2)


def curves(runs: list[HumanEvalRun], costs: list[ModelCost], axis: str, k_limit: str = "half") -> list[Curve]:
    problem_sets = {r.label: frozenset(r.by_problem()) for r in runs}
    if len(set(problem_sets.values())) > 1:  # pass@k over different problems would not compare
        sizes = ", ".join(f"{label}: {len(p)} problems" for label, p in problem_sets.items())
        raise ValueError(f"the runs cover different problems ({sizes}): run humaneval with the same --limit for all")
    cost_fn = {"flops": lambda c: c.flops, "seconds": lambda c: c.seconds}[axis]
    unit = min(cost_fn(c)(1) for c in costs)
    top = max(cost_fn(c)(c.samples_per_problem) for c in costs)
    steps = int(np.ceil(np.log2(top / unit) * BUDGET_STEPS_PER_DOUBLING)) + 1
    units = [2 ** (i / BUDGET_STEPS_PER_DOUBLING) for i in range(steps + 1)]
    out = []
    for run, cost in zip(runs, costs, strict=True):
        fn = cost_fn(cost)
        most = k_max(cost.samples_per_problem, k_limit)
        ks, scores, capped = [], [], []
        for u in units:
            k, score = pass_at_budget(run, fn, u * unit, most)
            ks.append(k)
            scores.append(score)
            capped.append(k == most and fn(k + 1) <= u * unit)
        out.append(Curve(run.label, axis, [u * unit for u in units], units, ks, scores, capped))
    return out


def winners(curves_: list[Curve]) -> list[dict]:
    """Per budget: each model's k and score, and who scores highest (a tie names all of them)."""
    rows = []
    for i, unit in enumerate(curves_[0].units):
        entries = {c.run: (c.k[i], c.score[i], c.capped[i]) for c in curves_}
        best = max(score for _, score, _ in entries.values())
        leaders = [run for run, (_, score, _) in entries.items() if score == best and best > 0]
        rows.append({"units": unit, "budget": curves_[0].budgets[i], "entries": entries, "winner": leaders})
    return rows


# --- measuring the server ---


async def measure_rates(
    url: str,
    model: str,
    prompts: list[str],
    batches: tuple[int, ...] = BATCH_SIZES,
    tokens: int = MEASURE_TOKENS,
    log: Callable[[str], None] = print,
) -> Rates:
    """Prefill tok/s (median over one-token completions of the prompts) and the best aggregate decode
    tok/s over batch sizes (n samples of one prompt, `tokens` each, EOS ignored where the server allows;
    the counted tokens are those the server reports)."""
    async with AsyncClient(url, timeout=600) as client:
        await client.complete(prompts[0], model=model, max_tokens=4)  # warm-up
        prefill = []
        for prompt in prompts:
            started = time.perf_counter()
            response = await client.complete(prompt, model=model, max_tokens=1, temperature=0)
            elapsed = time.perf_counter() - started
            prefill.append(response["usage"]["prompt_tokens"] / elapsed)
        prefill_tok_s = statistics.median(prefill)
        by_batch = {}
        for n in batches:
            started = time.perf_counter()
            response = await client.complete(prompts[0], model=model, max_tokens=tokens, temperature=0.8, n=n, ignore_eos=True, seed=0)
            elapsed = time.perf_counter() - started
            usage = response["usage"]
            decode_s = max(elapsed - usage["prompt_tokens"] / prefill_tok_s, 1e-9)
            by_batch[n] = usage["completion_tokens"] / decode_s
            log(f"  {model}: batch {n:>2}: {by_batch[n]:.1f} tok/s")
    best = max(by_batch, key=by_batch.__getitem__)
    return Rates(prefill_tok_s, by_batch[best], best, by_batch)


async def served_models(url: str) -> dict[str, dict]:
    async with AsyncClient(url, timeout=60) as client:
        return {m["id"]: m for m in await client.models()}


# --- the command ---


def budget(
    runs: list[HumanEvalRun],
    out: Path,
    url: str | None,
    parameters: dict[str, int],
    prompts_per_model: int = 5,
    log: Callable[[str], None] = print,
    k_limit: str = "half",
) -> dict:
    """Curves on both axes (time only with a server to measure), written to out/budget.{json,md,png}."""
    served = asyncio.run(served_models(url)) if url else {}
    known = {name: int(card["parameters"]) for name, card in served.items() if card.get("parameters")} | parameters
    missing = sorted({r.model for r in runs} - set(known))
    if missing:
        raise ValueError(f"no parameter count for {', '.join(missing)}: the server does not say; give --parameters MODEL=N")
    problems = {task: p.prompt for task, p in problems_of(runs).items()}
    rates: dict[str, Rates] = {}
    if url:
        for model in dict.fromkeys(r.model for r in runs):
            run = next(r for r in runs if r.model == model)
            ids = list(run.by_problem())[:prompts_per_model]
            log(f"measuring {model} at {url} (prefill on {len(ids)} prompts, batches {BATCH_SIZES})")
            # half the context at most: the prompt keeps room (a server trims a long prompt to fit the rest)
            context = int(served.get(model, {}).get("context_length") or 2 * MEASURE_TOKENS)
            tokens = max(8, min(MEASURE_TOKENS, context // 2))
            rates[model] = asyncio.run(measure_rates(url, model, [problems[t] for t in ids], tokens=tokens, log=log))
    costs = [costs_of(r, known[r.model], rates.get(r.model)) for r in runs]
    result: dict = {"costs": [asdict(c) for c in costs], "k_limit": k_limit, "curves": {}, "winners": {}}
    # a completion-mode run and an instruct-mode one have other prompts (and lengths): compared apart
    for mode, temperature in sorted({(r.mode, r.temperature) for r in runs}):
        group = [(r, c) for r, c in zip(runs, costs, strict=True) if (r.mode, r.temperature) == (mode, temperature)]
        for axis in ("flops", "seconds") if url else ("flops",):
            cs = curves([r for r, _ in group], [c for _, c in group], axis, k_limit)
            key = f"{axis}@t{temperature:g}" if mode == "completion" else f"{axis}@{mode}-t{temperature:g}"
            result["curves"][key] = [asdict(c) for c in cs]
            result["winners"][key] = winners(cs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "budget.md").write_text(markdown(result))
    _plot(out / "budget.png", result)
    return result


def markdown(result: dict) -> str:
    lines = [
        "# pass@k under a budget (Hassid et al. 2024)",
        "",
        "flops(k) = 2·N·(P + k·G); time(k) = P / prefill tok/s + k·G / decode tok/s at the best batch size. "
        "N parameters, P prompt tokens per problem (one shared prefill), G generated tokens per sample. "
        "Budgets in units of the cheapest model's one-sample cost; k = 0 scores 0; "
        + (
            "k up to half the samples drawn per problem, as the paper estimates it; * marks a budget that would buy more."
            if result.get("k_limit", "half") == "half"
            else "k up to every sample drawn (--k-up-to-n, not the paper's setting); * marks a budget that would buy more."
        ),
        "",
        "| run | N | P | G | prefill tok/s | decode tok/s (batch) | FLOPs/sample | s/sample |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["costs"]:
        r = c["rates"]
        rate = f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} ({r['best_batch']})" if r else "- | -"
        flops1 = 2 * c["parameters"] * (c["prompt_tokens"] + c["generated_tokens"])
        secs = f"{c['prompt_tokens'] / r['prefill_tok_s'] + c['generated_tokens'] / r['decode_tok_s']:.2f}" if r else "-"
        lines.append(
            f"| {c['run']} | {c['parameters'] / 1e6:.0f}M | {c['prompt_tokens']:.0f} | "
            f"{c['generated_tokens']:.0f} | {rate} | {flops1:.2e} | {secs} |"
        )
    for key, rows in result["winners"].items():
        runs = list(rows[0]["entries"])
        lines += [
            "",
            f"## Who wins: {key}",
            "",
            "| budget (units) | " + " | ".join(runs) + " | winner |",
            "|---|" + "---|" * (len(runs) + 1),
        ]
        for row in rows:
            cells = [f"k={k}{'*' if capped else ''} {100 * score:.1f}%" for k, score, capped in row["entries"].values()]
            lines.append(f"| {row['units']:.2f} | " + " | ".join(cells) + f" | {', '.join(row['winner']) or '-'} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["curves"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.8 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        for curve in result["curves"][key]:
            ax.step(curve["units"], [100 * s for s in curve["score"]], where="post", marker=".", label=curve["run"])
        axis, temperature = key.split("@")
        ax.set_title(f"pass_{'flops' if axis == 'flops' else 'time'}@budget, {temperature}", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"budget ({'FLOPs' if axis == 'flops' else 'seconds'}, units of the cheapest sample)")
        ax.set_ylabel("pass@k, % of problems")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
