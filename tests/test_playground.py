"""The playground at / in a real browser (Debian's Chromium through Playwright) against real servers:
ghost text is the completion the server logged, Tab inserts it, typing on cancels the request in
flight, a FIM model gets the text after the cursor, a keyed server refuses until the key is given,
and the page says nothing on its console."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from testkit.browser import Watched, chromium, watched_page
from tests.conftest import FIM_MODEL, TINY_LLAMA, ServerProcess, one_store
from tests.test_metrics import scrape, value

KEY = "playground-test-key-1"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def play_repo(long_llama_repo: Path, fim_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama (a 1024-token context) and the tiny StarCoder2 (fills in the middle) in one store."""
    return one_store(tmp_path_factory.mktemp("play_repository"), (long_llama_repo, TINY_LLAMA), (fim_repo, FIM_MODEL))


@pytest.fixture(scope="module")
def play_server(play_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(play_repo, [TINY_LLAMA, FIM_MODEL], flags=["--log-prompts"]) as server:
        yield server


def completions_logged(server: ServerProcess) -> list[dict]:
    return [line for line in server.access_log() if line["route"] == "/v1/completions"]


def logged_after(server: ServerProcess, seen: int) -> dict:
    """The first completion the server logged after the `seen` before it (its line comes at the stream's end)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = completions_logged(server)
        if len(lines) > seen:
            return lines[seen]
        time.sleep(0.05)
    raise AssertionError(f"the server logged no completion after its first {seen}")


def open_playground(watched: Watched, server: ServerProcess, models: int) -> Page:
    page = watched.page
    page.goto(f"{server.url}/")
    expect(page.locator("#model option")).to_have_count(models)
    return page


def settle(page: Page, state: str = "done") -> None:
    expect(page.locator("#editor")).to_have_attribute("data-state", state, timeout=30_000)


def test_the_ghost_text_is_the_completion_the_server_logged_and_tab_inserts_it(browser: Browser, play_server: ServerProcess) -> None:
    with watched_page(browser) as watched:
        page = open_playground(watched, play_server, models=2)
        page.select_option("#model", TINY_LLAMA)
        page.fill("#temperature", "1.0")
        page.fill("#max-tokens", "20")
        seen = len(completions_logged(play_server))
        # long enough that the first prompt's tokens fill a few of the reuse grid's steps (at most 32 positions)
        code = (
            "import math\n\n\ndef distance(a, b):\n    dx = a.x - b.x\n    dy = a.y - b.y\n"
            "    return math.sqrt(dx * dx + dy * dy)\n\n\ndef add(a, b):\n    return"
        )
        page.locator("#code").fill(code)
        settle(page)
        ghost = page.locator("#ghost").text_content()
        entry = logged_after(play_server, seen)
        assert ghost and entry["completions"] == [ghost] and entry["prompt"] == code
        assert "suffix" not in entry  # tiny-llama does not fill in the middle: the page sent no suffix
        assert 0 < entry["completion_tokens"] <= 20
        assert re.fullmatch(r"\d+ ms", page.locator("#ttft").text_content() or "")
        assert page.locator("#cached").text_content() == f"{entry['cached_tokens']} of {entry['prompt_tokens']}"

        page.keyboard.press("Tab")  # accepts: the ghost text becomes the code, and the next completion is asked for
        assert page.locator("#code").input_value() == code + ghost
        expect(page.locator("#editor")).to_have_attribute("data-requests", "2")
        settle(page)
        again = logged_after(play_server, seen + 1)
        assert again["prompt"] == code + ghost
        # the first prompt's tokens came from the prefix cache, and the page says how many
        assert again["cached_tokens"] > 0
        assert page.locator("#cached").text_content() == f"{again['cached_tokens']} of {again['prompt_tokens']}"

        page.keyboard.press("Escape")  # dismisses
        expect(page.locator("#ghost")).to_have_text("")
        assert page.locator("#code").input_value() == code + ghost

        # the server's numbers beside the editor, refreshed while typing: the tokens it generated
        tokens = value(scrape(play_server.url), "slipstream_completion_tokens_total", model=TINY_LLAMA)
        expect(page.locator("#m-tokens")).to_have_text(str(int(tokens)), timeout=10_000)
        assert re.fullmatch(r"[\d.]+ ms [\d.]+ ms [\d.]+ ms", page.locator("#m-ttft").text_content() or "")
        assert watched.problems() == []


def test_a_burst_of_keystrokes_asks_once_at_the_pause(browser: Browser, play_server: ServerProcess) -> None:
    with watched_page(browser) as watched:
        page = open_playground(watched, play_server, models=2)
        page.select_option("#model", TINY_LLAMA)
        page.fill("#max-tokens", "4")
        page.locator("#code").fill("")
        seen = len(completions_logged(play_server))
        page.locator("#code").press_sequentially("def total(values):", delay=40)  # well inside the pause
        settle(page)
        time.sleep(0.5)
        lines = completions_logged(play_server)[seen:]
        assert [line["prompt"] for line in lines] == ["def total(values):"]
        assert page.locator("#editor").get_attribute("data-requests") == "1"
        assert watched.problems() == []


def test_typing_on_cancels_the_request_in_flight(browser: Browser, bundled_server: ServerProcess) -> None:
    """Gemma-3-270M: a 400-token completion streams for seconds, long enough to type into."""
    with watched_page(browser) as watched:
        page = open_playground(watched, bundled_server, models=2)
        page.select_option("#model", "gemma3-270m")
        page.fill("#max-tokens", "400")
        cancelled = value(scrape(bundled_server.url), "slipstream_cancelled_requests_total", model="gemma3-270m")
        page.locator("#code").fill("def quicksort(items):\n")
        settle(page, "streaming")
        page.keyboard.type("    ")  # typing on: the stream is aborted at once, the next one asked for after the pause
        deadline = time.monotonic() + 10
        while value(scrape(bundled_server.url), "slipstream_cancelled_requests_total", model="gemma3-270m") <= cancelled:
            assert time.monotonic() < deadline, "the server never saw the request cancelled"
            time.sleep(0.1)
        expect(page.locator("#m-cancelled")).not_to_have_text(str(int(cancelled)), timeout=10_000)
        page.keyboard.press("Escape")  # the next one too: nothing left streaming when the page closes
        assert watched.problems() == []


def test_a_model_that_fills_in_the_middle_gets_the_text_after_the_cursor(browser: Browser, play_server: ServerProcess) -> None:
    with watched_page(browser) as watched:
        page = open_playground(watched, play_server, models=2)
        page.select_option("#model", FIM_MODEL)
        expect(page.locator("#fim-note")).to_be_visible()
        page.fill("#max-tokens", "8")
        page.locator("#code").fill("def area(r):\n    \n    return result\n")
        settle(page)
        seen = len(completions_logged(play_server))
        editor = page.locator("#code")
        editor.press("Control+Home")
        editor.press("ArrowDown")
        editor.press("End")  # the cursor on the empty body line, before `return result`
        page.keyboard.type("x")
        settle(page)
        entry = logged_after(play_server, seen)
        assert entry["prompt"] == "def area(r):\n    x" and entry["suffix"] == "\n    return result\n"
        assert entry["completions"] == [page.locator("#ghost").text_content()]
        assert watched.problems() == []


def test_a_keyed_server_refuses_until_the_key_is_entered(browser: Browser, play_repo: Path) -> None:
    with ServerProcess(play_repo, [TINY_LLAMA], env={"SLIPSTREAM_API_KEYS": KEY}) as server, watched_page(browser) as watched:
        page = watched.page
        page.goto(f"{server.url}/")  # the page itself is open: it holds nothing
        expect(page.locator("#key-field")).to_be_visible()
        expect(page.locator("#status")).to_contain_text("needs an API key")
        assert page.locator("#model option").count() == 0
        # the API behind it still refuses without the key, from the page as from anywhere
        refused = page.evaluate("async () => (await fetch('/v1/completions', {method: 'POST', body: '{}'})).status")
        assert refused == 401
        page.locator("#code").fill("def f():\n")
        expect(page.locator("#status")).to_contain_text("needs an API key")
        assert [line["status"] for line in completions_logged(server)] == [401]  # only the probe above: the page sent none

        page.fill("#api-key", "not-the-key-at-all")
        page.press("#api-key", "Enter")
        expect(page.locator("#status")).to_contain_text("refused the key")

        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        expect(page.locator("#model option")).to_have_count(1)
        page.locator("#code").fill("def f():\n    return")
        settle(page)
        assert [line["status"] for line in completions_logged(server)] == [401, 200]
        assert page.evaluate("() => [sessionStorage.getItem('slipstream.apiKey'), localStorage.length, document.cookie]") == [KEY, 0, ""]
        sent = [r for r in watched.requests if r.url.startswith(server.url)]
        assert all(KEY not in r.url for r in sent)  # never in a URL
        api = [r for r in sent if "/v1/" in r.url and r.all_headers().get("authorization") == f"Bearer {KEY}"]
        assert any(r.url.endswith("/v1/completions") for r in api)


def test_the_page_is_served_with_a_policy_that_allows_no_inline_script(play_server: ServerProcess) -> None:
    page = httpx.get(f"{play_server.url}/", timeout=10)
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "<script>" not in page.text and "style=" not in page.text and 'type="module" src="/playground/app.js"' in page.text
    script = httpx.get(f"{play_server.url}/playground/app.js", timeout=10)
    assert script.headers["content-type"].startswith("text/javascript") and script.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(f"{play_server.url}/playground/..%2Fapp.py", timeout=10)
    assert missing.status_code == 404
