"""`slipstream eval report RUN_DIR`: one page for a whole evaluation run.

Every study writes JSON (for machines), markdown (for people) and PNG plots into its folder; this page
gathers them: each study's markdown in a fixed order (HumanEval, budget, ranking, perf, perplexity,
latency, then any other), its plots below it, and the list of JSON files it came from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# (markdown file, its plots): the order a reader wants them in
STUDIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("report.md", ("report.png",)),
    ("budget.md", ("budget.png",)),
    ("rank.md", ("rank.png",)),
    ("perf.md", ("perf.png", "perf_problems.png")),
    ("perplexity.md", ("perplexity.png",)),
    ("latency.md", ("latency_vs_prompt.png", "throughput_vs_concurrency.png")),
)
PAGE = "index.md"


def gather(root: Path) -> Path:
    """Write root/index.md from every study found under root; returns its path."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    known = {name for name, _ in STUDIES}
    found: list[tuple[Path, tuple[str, ...]]] = []
    for name, plots in STUDIES:
        found += [(p, plots) for p in sorted(root.rglob(name)) if p.parent != root or p.name != PAGE]
    found += [(p, ()) for p in sorted(root.rglob("*.md")) if p.name not in known and p.name != PAGE]
    if not found:
        raise ValueError(f"no study under {root}: run slipstream eval humaneval / budget / rank / perf / perplexity first")
    lines = [f"# Evaluation run: {root.name}", "", "Contents:", ""]
    lines += [f"- [{_title(p)}](#{_anchor(_title(p))}) ({_rel(p, root)})" for p, _ in found]
    for md, plots in found:
        lines += ["", "---", ""]
        lines += _demoted(md.read_text(), _title(md))
        for plot in plots:
            image = md.parent / plot
            if image.is_file():
                lines += ["", f"![{plot}]({_rel(image, root)})"]
        own = md.with_suffix(".json")  # the study's own data, else every JSON beside it
        data = [own] if own.is_file() else sorted(md.parent.glob("*.json"))
        if data:
            lines += ["", "Data: " + ", ".join(f"[{p.name}]({_rel(p, root)})" for p in data)]
    page = root / PAGE
    page.write_text("\n".join(lines) + "\n")
    return page


def _title(md: Path) -> str:
    first = next((line for line in md.read_text().splitlines() if line.startswith("# ")), None)
    return first[2:].strip() if first else md.stem


def _demoted(text: str, title: str) -> list[str]:
    """The study's own page one heading level down, under its title."""
    out = [f"## {title}"]
    for line in text.splitlines():
        if line.startswith("# ") and line[2:].strip() == title:
            continue
        out.append("#" + line if line.startswith("#") else line)
    return out


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")
