"""The editor sessions `eval editor` replays: real source files retyped word by word.

A session is a stretch of one file typed again: the text before it is already in the buffer, then the
next `words` words arrive one at a time, and at each word's end the editor asks for a completion of
the file up to the cursor. Every prompt of a session starts at the same character (the first line
start that keeps the session's longest prompt within `prompt_chars`): an editor keeps the top of its
window where it is while the user types, so consecutive prompts share all but their last few words;
a window sliding with each word would share no prefix at all, which is not what editors send.
Sessions of one file are spread evenly over it after its first `prompt_chars` characters, so that
each has a full window of context before it. A Request is what one of its completions recorded.
"""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class Session:
    file: str
    index: int  # the session's number within its file
    window_start: int  # the character every prompt of the session starts at
    cursors: tuple[int, ...]  # the cursor after each typed word: prompt i is text[window_start:cursors[i]]

    def prompts(self, text: str) -> list[str]:
        return [text[self.window_start : c] for c in self.cursors]


def default_files() -> list[Path]:
    """Real source files of three languages found on this machine: this Python's own textwrap.py, npm's
    npm.js (JavaScript), glibc's regex.h (C). Where one is missing another of its language may stand in."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = [
        [stdlib / "textwrap.py", Path("/usr/lib/python3.11/textwrap.py")],
        [
            Path("/usr/lib/node_modules/npm/lib/npm.js"),
            Path("/usr/share/nodejs/npm/lib/npm.js"),
            Path("/usr/local/lib/node_modules/npm/lib/npm.js"),
        ],
        [Path("/usr/include/regex.h"), Path("/usr/include/zlib.h"), Path("/usr/include/stdlib.h")],
    ]
    return [next((p for p in group if p.is_file()), group[0]) for group in candidates]


def read_files(paths: list[Path], log: Callable[[str], None] = print) -> dict[str, str]:
    """Each readable file's text by path; a missing or unreadable one is skipped with a line saying so."""
    texts = {}
    for path in paths:
        try:
            texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log(f"skipping {path}: {exc.strerror or exc}")
    return texts


def sessions_of(name: str, text: str, sessions: int, words: int, prompt_chars: int) -> list[Session]:
    """`sessions` sessions of `words` words each over one file's text (fewer where the file is short)."""
    ends = [m.end() for m in _WORD.finditer(text)]
    context = min(prompt_chars, len(text) // 2)  # a short file still gets its second half typed
    typable = [e for e in ends if e > context]
    if not typable:
        return []
    step = max(len(typable) // sessions, 1)
    found = []
    for k in range(sessions):
        cursors = tuple(typable[k * step : k * step + min(words, step)])
        if not cursors:
            break
        found.append(Session(name, k, _window_start(text, cursors[0], cursors[-1], prompt_chars), cursors))
    return found


def build(texts: dict[str, str], sessions: int, words: int, prompt_chars: int) -> list[Session]:
    return [s for name, text in texts.items() for s in sessions_of(name, text, sessions, words, prompt_chars)]


def _window_start(text: str, first_cursor: int, last_cursor: int, prompt_chars: int) -> int:
    """The first line start from which the last prompt fits in prompt_chars; never past the line of the
    first cursor (a stretch typed longer than the budget makes its last prompts longer than it)."""
    earliest = last_cursor - prompt_chars
    if earliest <= 0:
        return 0
    line = text.find("\n", earliest - 1, last_cursor)
    start = line + 1 if line >= 0 else earliest
    return min(start, text.rfind("\n", 0, first_cursor) + 1)


@dataclass
class Request:
    server: str
    phase: str  # cold | warm
    file: str
    session: int
    word: int
    prompt_chars: int
    sent_s: float  # since the pass's start
    outcome: str  # completed | cancelled | error | lost
    total_s: float  # sent -> end of stream, or -> cancelled
    ttft_s: float | None = None  # sent -> first chunk with text (None: none came)
    prompt_tokens: int | None = None  # from the server's usage (None: not reported, or cancelled before it)
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens (None: not reported)
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    detail: str | None = None
