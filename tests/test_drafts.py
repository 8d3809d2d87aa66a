"""Prompt lookup, the drafter of speculative decoding that needs no second model."""

from __future__ import annotations

from server.engine.drafts import prompt_lookup
from tests.conftest import TINY


def test_the_longest_suffix_wins_and_its_latest_occurrence() -> None:
    assert prompt_lookup([1, 2, 3, 4, 5, 9, 1, 2], 3) == [3, 4, 5]
    # [9, 1, 2] occurred at the start: its follower wins over the later [1, 2]'s
    assert prompt_lookup([9, 1, 2, 3, 8, 1, 2, 4, 9, 1, 2], 2) == [3, 8]
    # of two occurrences of the same suffix, the latest
    assert prompt_lookup([1, 2, 3, 1, 2, 4, 1, 2], 5) == [4, 1, 2]


def test_nothing_to_offer_is_an_empty_draft() -> None:
    assert prompt_lookup([1, 2, 3, 4], 4) == []
    assert prompt_lookup([5, 6, 5], 4) == []  # one token is below the shortest suffix looked up
    assert prompt_lookup([], 4) == [] and prompt_lookup([7], 4) == [] and prompt_lookup([1, 2, 1, 2], 0) == []
    assert prompt_lookup([1, 2, 3, 1, 2], 8) == [3, 1, 2]  # as many as follow, up to k


def test_on_code_it_proposes_the_copied_identifier(tiny_repo) -> None:
    """A real tokenizer: the prompt defined a name, and the row has just typed its first pieces."""
    from server.engine import Prompter

    prompter = Prompter(tiny_repo, TINY)
    before = prompter.encode("def compute_total_price(items):\n    return sum(items)\n\nx = compute_total")
    whole = prompter.encode("def compute_total_price(items):\n    return sum(items)\n\nx = compute_total_price(items)")
    assert whole[: len(before)] == before  # the same pieces up to the cursor
    draft = prompt_lookup(before, 3)
    assert draft == whole[len(before) : len(before) + 3]  # "_price(" as the definition spelt it
