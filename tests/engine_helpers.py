"""What the engine tests share: a generation's events folded into each choice's text."""

from __future__ import annotations

from collections.abc import Iterable

from server.engine import Delta, Usage


def fold(events: Iterable[Delta | Usage]) -> tuple[dict[int, str], Usage]:
    """Each choice's whole text, by index, and the generation's Usage (which must come)."""
    texts: dict[int, str] = {}
    usage = None
    for event in events:
        if isinstance(event, Delta):
            texts[event.index] = texts.get(event.index, "") + event.text
        else:
            usage = event
    assert usage is not None
    return texts, usage
