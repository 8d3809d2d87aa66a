"""`slipstream eval report RUN_DIR`: one page for a whole evaluation run.

Every study writes JSON (for machines), markdown (for people), PNG plots and its HTML page into its
folder; this page gathers them: the HumanEval runs found (model, mode, temperature, pass@k, each
linked), then each study's markdown in a fixed order (HumanEval, budget, ranking, perf, perplexity,
latency, the traffic replays, then any other), its plots below it, and the list of JSON files it came
from. Written twice: index.md, and index.html (one offline page, plots inlined, each study's own page
linked), every study's page written again on the way so that older folders get theirs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eval.html_page import STUDIES, anchor, title_of, write_page, write_study

PAGE = "index.md"


def gather(root: Path) -> Path:
    """Write root/index.md and root/index.html (and every study's own page) from every study found under
    root; returns the markdown's path."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    known = {name for name, _ in STUDIES}
    found: list[tuple[Path, tuple[str, ...]]] = []
    for name, plots in STUDIES:
        found += [(p, plots) for p in sorted(root.rglob(name)) if p.parent != root or p.name != PAGE]
    found += [(p, ()) for p in sorted(root.rglob("*.md")) if p.name not in known and p.name != PAGE]
    if not found:
        raise ValueError(f"no study under {root}: run slipstream eval humaneval / budget / rank / perf / perplexity first")
    for md, _ in found:
        write_study(md)
    lines = [f"# Evaluation run: {root.name}", "", *_runs(root), "Contents:", ""]
    lines += [f"- [{_title(p)}](#{anchor(_title(p))}) (its own page: [{_rel(p, root)[: -len('.md')]}]({_rel(p, root)}))" for p, _ in found]
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
    write_page(page)
    return page


def _runs(root: Path) -> list[str]:
    """The HumanEval runs under root (each folder's summary.json), one table row each."""
    rows = []
    for path in sorted(root.rglob("summary.json")):
        try:
            s = json.loads(path.read_text())
            scores = sorted(s.get("pass_at_k", {}).items(), key=lambda kv: int(kv[0]))
            passk = ", ".join(f"pass@{k} {100 * v:.1f}%" for k, v in scores) or "not scored"
            cells = [s["model"], s.get("mode", "completion"), f"{float(s['temperature']):g}", str(s.get("samples_per_problem", "")), passk]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # another shape: said, not skipped silently
            cells = ["?", "?", "?", "?", f"unreadable summary.json ({type(exc).__name__}: {exc})"]
        folder = _rel(path.parent, root)
        rows.append("| " + " | ".join([*cells, f"[{folder}]({folder}/summary.json)"]) + " |")
    if not rows:
        return []
    header = ["| model | mode | temperature | samples/problem | pass@k | run |", "|---|---|---|---|---|---|"]
    return ["## Runs", "", *header, *rows, ""]


def _title(md: Path) -> str:
    return title_of(md.read_text(), md.stem)


def _demoted(text: str, title: str) -> list[str]:
    """The study's own page one heading level down, under its title."""
    out = [f"## {title}"]
    for line in text.splitlines():
        if line.startswith("# ") and line[2:].strip() == title:
            continue
        out.append("#" + line if line.startswith("#") else line)
    return out


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")
