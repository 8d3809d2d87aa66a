"""Where a benchmark's results go: <out>/<stem>.json for machines, .md for people, .png to compare."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write(out: Path, stem: str, data: dict, text: str, plot: Callable[[Path], None]) -> None:
    """The three files of one run, and the markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
    plot(out / f"{stem}.png")
    print(text)


def side_by_side(ax: Any, names: list[str], bars: dict[str, list[float]], ylabel: str) -> None:
    """One group of bars per name (a model), one bar per label in it (cold and warm, chunked and not)."""
    width = 0.8 / len(bars)
    for k, (label, values) in enumerate(bars.items()):
        offset = (k - (len(bars) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(names))], values, width, label=label)
    ax.set_xticks(list(range(len(names))), names)
    ax.set_ylabel(ylabel)
    ax.legend()
