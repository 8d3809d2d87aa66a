"""The evaluation reports as HTML pages, opened from disk in a real browser (Debian's Chromium through
Playwright): a study writes its page, `eval report` the folder's index; the plots render, the tables
are tables, nothing is fetched, and markdown that carries HTML cannot run a script."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from testkit.browser import chromium, watched_page
from tests.conftest import ROOT
from tests.test_eval_studies import CANONICAL, PROBLEM, SLOW, WRONG, write_run


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def slipstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipstream.cli", "eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_a_study_and_the_run_index_are_pages_whose_plots_render_offline(browser: Browser, tmp_path: Path) -> None:
    task = PROBLEM.task_id
    write_run(tmp_path, "m", 0.8, [(task, WRONG), (task, CANONICAL), (task, WRONG), (task, SLOW)])
    done = slipstream("rank", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "rank.html").is_file()  # the study writes its own page
    page = slipstream("report", str(tmp_path))
    assert page.returncode == 0, page.stderr[-3000:]
    for name, plots in (("rank.html", 1), ("index.html", 1)):
        with watched_page(browser) as watched:
            watched.page.goto((tmp_path / name).as_uri())
            images = watched.page.evaluate("() => [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            assert len(images) == plots and all(done and w > 300 and h > 200 for done, w, h in images), images
            assert watched.page.locator("table tr").count() > 1  # the study's table rendered as a table
            assert watched.page.locator("h1").count() == 1
            assert {r.url.split(":")[0] for r in watched.requests} <= {"file", "data"}  # nothing from the network
            assert watched.problems() == []
    with watched_page(browser) as watched:
        watched.page.goto((tmp_path / "index.html").as_uri())
        # the runs found, and each study's own page linked from the index
        assert watched.page.locator("table").first.locator("td").first.text_content() == "m"
        assert watched.page.locator("a[href='rank.html']").count() == 1
        assert watched.page.locator("#ranking-without-tests-rank-scorek").count() == 1  # contents links land


def test_markdown_that_carries_html_cannot_run_a_script(browser: Browser, tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text(
        "# Notes\n\n<script>document.title = 'ran'</script>\n\n<img src=x onerror=\"document.title='ran'\">\n\n"
        "![remote](http://127.0.0.1:9/plot.png)\n"
    )
    page = slipstream("report", str(tmp_path))
    assert page.returncode == 0, page.stderr[-3000:]
    for name in ("notes.html", "index.html"):
        with watched_page(browser) as watched:
            watched.page.goto((tmp_path / name).as_uri())
            assert watched.page.title() != "ran"
            assert "<script>" in watched.page.locator("body").inner_text()  # shown as text, not run
            # the remote image is refused by the page's policy, not loaded
            assert watched.page.evaluate("() => [...document.images].map(i => i.naturalWidth)") == [0]
            assert any("Content Security Policy" in m.text and "127.0.0.1:9" in m.text for m in watched.console)
