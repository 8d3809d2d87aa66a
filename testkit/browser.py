"""A real browser for the tests and the screenshots: Debian's Chromium (`make test` installs it;
Playwright's own browser download cannot be reached here) driven by Playwright, with every console
message and page error a page produces kept for the test to assert on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser
        finally:
            browser.close()


class Watched:
    """A page with what it said (console messages, uncaught errors) and every URL it requested."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[ConsoleMessage] = []
        self.errors: list[str] = []
        self.requests: list[Request] = []
        # Playwright marks each handler: a function of ours, not a builtin such as list.append
        page.on("console", lambda message: self.console.append(message))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", lambda request: self.requests.append(request))

    def problems(self) -> list[str]:
        """Console errors and warnings, and uncaught exceptions: none is expected of a page that works."""
        said = [f"console {m.type}: {m.text}" for m in self.console if m.type in ("error", "warning")]
        return said + [f"uncaught: {e}" for e in self.errors]


@contextmanager
def watched_page(browser: Browser, width: int = 1280, height: int = 800) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        yield Watched(context.new_page())
    finally:
        context.close()
