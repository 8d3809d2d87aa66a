"""Incremental detokenisation and stop sequences, on a real (tiny, byte-level) tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from server.engine.text import IncrementalDetokenizer, StopMatcher


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))


@pytest.mark.parametrize("text", ["def f(x):\n    return x  # done\n", "héllo wörld 你好 ✓\n\tx = 'ünï'"])
def test_deltas_add_up_to_the_full_decode(tokenizer: Tokenizer, text: str) -> None:
    context = tokenizer.encode("import os\n").ids
    ids = tokenizer.encode(text).ids
    detok = IncrementalDetokenizer(tokenizer, context)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    # a multi-byte character split over byte tokens is never sent half-made
    assert not any("\ufffd" in p for p in pieces)


def feed(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.push(p) for p in pieces)


def test_stop_across_pieces_is_cut_and_never_sent() -> None:
    matcher = StopMatcher(["\n\n"])
    out = feed(matcher, ["a = 1", "\n", "\nb = 2"])
    assert out == "a = 1" and matcher.stopped
    assert matcher.push("more") == "" and matcher.flush() == ""


def test_partial_stop_is_held_back_then_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.push("x ST") == "x "  # "ST" may start STOP
    assert matcher.push("OCK") == "STOCK"  # it did not
    assert matcher.push(" S") == " "
    assert matcher.flush() == "S" and not matcher.stopped


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert feed(matcher, ["hel", "lo wor", "ld"]) == "hel"


def test_no_stops_passes_everything() -> None:
    matcher = StopMatcher([])
    assert feed(matcher, ["a", "b"]) == "ab" and matcher.flush() == ""
