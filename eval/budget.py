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
throughput, not one request's latency. `time_at="run"` (ours, an option): time(k) = k · G / the run's
own aggregate tokens/s (summary.json: its generated tokens over its wall time, prefill folded in), the
batch the run really used rather than the best one. Budgets are on a log scale in units of the cheapest
model's one-sample cost.

Beside pass@k (the tests as an oracle), each budget's k is scored without tests too: rank-score@k, the
best of k by mean log-probability (eval/rank.py, samples that did not end never submitted). Every score
carries a 95% bootstrap interval over problems, and at each budget the leader is compared with the
runner-up on the same problems (paired bootstrap): a lead inside the noise is said to be one.
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
from eval import passk, rank
from eval.budget_report import markdown, plot
from eval.html_page import write_study
from eval.ranker import FIELD as RANKER_FIELD
from eval.ranker import score_runs
from eval.runs import HumanEvalRun, problems_of
from eval.stats import bootstrap_interval, paired_bootstrap

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # up to the rows the server decodes together (16 where it does not say)
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
    time_at: str = "best"  # "best": the best batch's rates (the paper); "run": the run's own aggregate rate
    run_tok_s: float = 0.0
    ranker_flops: float = 0.0  # a second model scoring each sample (prompt + completion, one prefill): its cost per sample
    ranker_seconds: float = 0.0

    def flops(self, k: int) -> float:
        return 0.0 if k == 0 else 2.0 * self.parameters * (self.prompt_tokens + k * self.generated_tokens)

    def seconds(self, k: int) -> float:
        if k == 0:
            return 0.0
        if self.time_at == "run":
            if self.run_tok_s <= 0:
                raise ValueError(f"{self.run}: its summary records no generation rate (resumed with nothing new?): use the best batch's")
            return k * self.generated_tokens / self.run_tok_s
        if self.rates is None:
            raise ValueError(f"{self.run}: no measured rates, so no time budget")
        return self.prompt_tokens / self.rates.prefill_tok_s + k * self.generated_tokens / self.rates.decode_tok_s

    def ranked_flops(self, k: int) -> float:
        """k samples and their ranking: a second model's scoring of each is paid for; the own logprobs are free."""
        return self.flops(k) + k * self.ranker_flops

    def ranked_seconds(self, k: int) -> float:
        return self.seconds(k) + k * self.ranker_seconds


@dataclass
class Curve:
    run: str
    axis: str  # "flops" or "seconds"
    budgets: list[float]  # in the axis' unit
    units: list[float]  # the same in units of the cheapest model's one-sample cost
    k: list[int]
    score: list[float]
    capped: list[bool]  # the budget would buy more samples than the run has
    score_interval: list[list[float]] = field(default_factory=list)  # 95% bootstrap over problems
    rank_score: list[float] = field(default_factory=list)  # the best of rank_k by mean logprob (no tests)
    rank_interval: list[list[float]] = field(default_factory=list)
    rank_k: list[int] = field(default_factory=list)  # k once the ranking is paid for (= k with the own logprobs)


def costs_of(run: HumanEvalRun, parameters: int, rates: Rates | None, time_at: str = "best") -> ModelCost:
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
        time_at,
        run.tokens_per_s,
    )


K_LIMITS = ("half", "all")  # how far k goes: half the samples drawn (the paper), or all of them
TIME_AT = ("best", "run")  # the time axis at the best batch's throughput (the paper), or at the run's own rate


def per_problem(run: HumanEvalRun, k: int, ranking: str | None = None) -> list[float]:
    """Each problem's score at k, in task order: pass@k (ranking None), or rank-score@k by a sample
    field (mean_logprob); k = 0 scores 0."""
    problems = run.by_problem()
    if k == 0:
        return [0.0] * len(problems)
    if ranking is None:
        return [passk.pass_at_k(len(s), sum(bool(x["passed"]) for x in s), k) for s in problems.values()]
    return [rank.problem_rank_scores(s, ranking, k) for s in problems.values()]


def k_max(samples: int, k_limit: str) -> int:
    """The largest k a run of `samples` samples per problem is scored at: Hassid et al. estimate pass@k
    for k up to half the samples drawn (the unbiased estimator keeps a margin there), "all" lets k
    reach them; a run of one sample (greedy) is scored at k = 1 either way."""
    if k_limit not in K_LIMITS:
        raise ValueError(f"k_limit is one of {K_LIMITS}, not {k_limit!r}")
    return samples if k_limit == "all" else max(1, samples // 2)


def curves(
    runs: list[HumanEvalRun], costs: list[ModelCost], axis: str, k_limit: str = "half", ranking: str = "mean_logprob"
) -> list[Curve]:
    """Each run's pass@k and rank-score@k (by the sample field `ranking`: its own mean logprob, or a
    ranker's, whose cost is then added to each sample's) over budgets in units of the cheapest sample."""
    problem_sets = {r.label: frozenset(r.by_problem()) for r in runs}
    if len(set(problem_sets.values())) > 1:  # pass@k over different problems would not compare
        sizes = ", ".join(f"{label}: {len(p)} problems" for label, p in problem_sets.items())
        raise ValueError(f"the runs cover different problems ({sizes}): run humaneval with the same --limit for all")
    cost_fn = {"flops": lambda c: c.flops, "seconds": lambda c: c.seconds}[axis]
    ranked_fn = {"flops": lambda c: c.ranked_flops, "seconds": lambda c: c.ranked_seconds}[axis]
    unit = min(cost_fn(c)(1) for c in costs)
    top = max(cost_fn(c)(c.samples_per_problem) for c in costs)
    steps = int(np.ceil(np.log2(top / unit) * BUDGET_STEPS_PER_DOUBLING)) + 1
    units = [2 ** (i / BUDGET_STEPS_PER_DOUBLING) for i in range(steps + 1)]
    out = []
    for run, cost in zip(runs, costs, strict=True):
        fn = cost_fn(cost)
        most = k_max(cost.samples_per_problem, k_limit)
        curve = Curve(run.label, axis, [u * unit for u in units], units, [], [], [])
        for u in units:
            k = passk.largest_k(fn, u * unit, most)
            rank_k = passk.largest_k(ranked_fn(cost), u * unit, most)
            oracle, ranked = per_problem(run, k), per_problem(run, rank_k, ranking)
            curve.k.append(k)
            curve.rank_k.append(rank_k)
            curve.score.append(float(np.mean(oracle)))
            curve.capped.append(k == most and fn(k + 1) <= u * unit)
            curve.score_interval.append(list(bootstrap_interval(oracle)))
            curve.rank_score.append(float(np.mean(ranked)))
            curve.rank_interval.append(list(bootstrap_interval(ranked)))
        out.append(curve)
    return out


def winners(curves_: list[Curve], runs: list[HumanEvalRun]) -> list[dict]:
    """Per budget: each model's k and score, who scores highest (a tie names all of them), and the
    leader against the runner-up on the same problems (paired bootstrap of their per-problem pass@k)."""
    by_label = {r.label: r for r in runs}
    rows = []
    for i, unit in enumerate(curves_[0].units):
        entries = {c.run: (c.k[i], c.score[i], c.capped[i]) for c in curves_}
        best = max(score for _, score, _ in entries.values())
        leaders = [run for run, (_, score, _) in entries.items() if score == best and best > 0]
        row = {"units": unit, "budget": curves_[0].budgets[i], "entries": entries, "winner": leaders, "lead": None}
        ordered = sorted(curves_, key=lambda c: -c.score[i])
        if len(leaders) == 1 and len(ordered) > 1:
            first, second = ordered[0], ordered[1]
            lead = paired_bootstrap(per_problem(by_label[first.run], first.k[i]), per_problem(by_label[second.run], second.k[i]))
            row["lead"] = {"over": second.run, **asdict(lead), "significant": lead.significant}
        rows.append(row)
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
        prefill_tok_s = await prefill_rate(client, model, prompts)
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


async def prefill_rate(client: AsyncClient, model: str, prompts: list[str]) -> float:
    """Prompt tokens/s: the median over one-token completions of the prompts, after a warm-up."""
    await client.complete(prompts[0], model=model, max_tokens=4)
    rates = []
    for prompt in prompts:
        started = time.perf_counter()
        response = await client.complete(prompt, model=model, max_tokens=1, temperature=0)
        rates.append(response["usage"]["prompt_tokens"] / (time.perf_counter() - started))
    return statistics.median(rates)


async def _ranker_prefill_rate(url: str, ranker: str, prompts: list[str]) -> float:
    async with AsyncClient(url, timeout=600) as client:
        return await prefill_rate(client, ranker, prompts)


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
    time_at: str = "best",
    ranker: str | None = None,
    across_modes: bool = False,
) -> dict:
    """Curves on both axes (time: at the best batch with a server to measure; at the run's own rate
    with time_at "run", no server needed), written to out/budget.{json,md,png}."""
    if time_at not in TIME_AT:
        raise ValueError(f"time_at is one of {TIME_AT}, not {time_at!r}")
    served = asyncio.run(served_models(url)) if url else {}
    known = {name: int(card["parameters"]) for name, card in served.items() if card.get("parameters")} | parameters
    if ranker and not url:
        raise ValueError("--ranker scores the samples on a server: give --url, not --flops-only")
    missing = sorted(({r.model for r in runs} | ({ranker} if ranker else set())) - set(known))
    if missing:
        raise ValueError(f"no parameter count for {', '.join(missing)}: the server does not say; give --parameters MODEL=N")
    problems = {task: p.prompt for task, p in problems_of(runs).items()}
    rates: dict[str, Rates] = {}
    if url and time_at == "best":
        for model in dict.fromkeys(r.model for r in runs):
            run = next(r for r in runs if r.model == model)
            ids = list(run.by_problem())[:prompts_per_model]
            rows = served.get(model, {}).get("max_batch_rows")
            batches = tuple(b for b in BATCH_SIZES if b <= (rows if isinstance(rows, int) and rows > 0 else 16))
            log(f"measuring {model} at {url} (prefill on {len(ids)} prompts, batches {batches})")
            # half the context at most: the prompt keeps room (a server trims a long prompt to fit the rest)
            context = int(served.get(model, {}).get("context_length") or 2 * MEASURE_TOKENS)
            tokens = max(8, min(MEASURE_TOKENS, context // 2))
            rates[model] = asyncio.run(measure_rates(url, model, [problems[t] for t in ids], batches, tokens=tokens, log=log))
    costs = [costs_of(r, known[r.model], rates.get(r.model), time_at) for r in runs]
    ranking = "mean_logprob"
    if ranker and url:
        score_runs(url, ranker, runs, problems_of(runs), log=log)
        ranking = RANKER_FIELD
        ids = list(runs[0].by_problem())[:prompts_per_model]
        ranker_rate = asyncio.run(_ranker_prefill_rate(url, ranker, [problems[t] for t in ids]))
        for cost in costs:  # the ranker reads each sample whole: prompt and completion, one prefill
            cost.ranker_flops = 2.0 * known[ranker] * (cost.prompt_tokens + cost.generated_tokens)
            cost.ranker_seconds = (cost.prompt_tokens + cost.generated_tokens) / ranker_rate
    result: dict = {
        "costs": [asdict(c) for c in costs],
        "k_limit": k_limit,
        "time_at": time_at,
        "ranker": ranker,
        "across_modes": across_modes,
        "curves": {},
        "winners": {},
    }
    # a completion-mode run and an instruct-mode one have other prompts (and lengths): compared apart, unless
    # across_modes (a chat model against a base one at one temperature, each at its own prompt's cost)
    for mode, temperature in sorted({("any" if across_modes else r.mode, r.temperature) for r in runs}):
        group = [(r, c) for r, c in zip(runs, costs, strict=True) if mode in ("any", r.mode) and r.temperature == temperature]
        for axis in ("flops", "seconds") if url or time_at == "run" else ("flops",):
            cs = curves([r for r, _ in group], [c for _, c in group], axis, k_limit, ranking)
            key = f"{axis}@t{temperature:g}" if mode == "completion" else f"{axis}@{mode}-t{temperature:g}"
            key = f"{axis}@modes-t{temperature:g}" if mode == "any" else key
            result["curves"][key] = [asdict(c) for c in cs]
            result["winners"][key] = winners(cs, [r for r, _ in group])
    out.mkdir(parents=True, exist_ok=True)
    (out / "budget.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "budget.md").write_text(markdown(result))
    plot(out / "budget.png", result)
    write_study(out / "budget.md")
    return result
