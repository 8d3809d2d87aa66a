"""The README's screenshots, taken in a real browser: `python -m testkit.screenshots`.

docs/playground.png: the playground on a `slipstream serve` of the bundled models (exported first if
needed), Gemma-3-270M completing a function body, the server's numbers beside it.
docs/report.png: the HumanEval page of docs/example-run, rendered by `slipstream eval report` into a
copy of the folder (the checkout's own stays as committed).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect

from server.models.export_gguf import export_bundled
from testkit.browser import chromium, watched_page
from testkit.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CODE = 'def is_palindrome(text: str) -> bool:\n    """True if text reads the same backwards, ignoring case and spaces."""\n'


def playground(out: Path) -> None:
    repository = ROOT / "model_repository"
    for name in ("gemma3-270m", "smollm2-135m"):
        export_bundled(name, repository)
    with ServerProcess(repository, ["gemma3-270m", "smollm2-135m"]) as server, chromium() as browser:
        with watched_page(browser, 1280, 720) as watched:
            page = watched.page
            page.goto(f"{server.url}/")
            expect(page.locator("#model option")).to_have_count(2)
            page.fill("#max-tokens", "48")
            editor = page.locator("#code")
            editor.fill(CODE)  # a first completion warms the prefix cache, as typing the docstring would
            expect(page.locator("#editor")).to_have_attribute("data-state", "done", timeout=60_000)
            page.keyboard.type("    ")
            expect(page.locator("#editor")).to_have_attribute("data-state", "done", timeout=60_000)
            time.sleep(0.5)  # the /metrics view refreshed at the completion's end
            page.screenshot(path=str(out))
            if watched.problems():
                raise RuntimeError(f"the page reported problems: {watched.problems()}")
    print(f"wrote {out}")


def report(out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        run = Path(scratch) / "example-run"
        shutil.copytree(DOCS / "example-run", run)
        subprocess.run([sys.executable, "-m", "slipstream.cli", "eval", "report", str(run)], check=True, cwd=ROOT)
        with chromium() as browser, watched_page(browser, 1280, 760) as watched:
            watched.page.goto((run / "report.html").as_uri())
            watched.page.screenshot(path=str(out), full_page=True)
    print(f"wrote {out}")


def main() -> None:
    playground(DOCS / "playground.png")
    report(DOCS / "report.png")


if __name__ == "__main__":
    main()
