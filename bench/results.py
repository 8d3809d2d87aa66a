"""Where a benchmark's results go: <out>/<stem>.json for machines, .md for people, .png to compare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def write(out: Path, stem: str, data: dict, text: str, plot: Callable[[Path], None]) -> None:
    """The three files of one run, and the markdown printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
    plot(out / f"{stem}.png")
    print(text)
