"""Argument types of the evaluation commands: each a clear argparse error for a bad value."""

from __future__ import annotations

import argparse


def floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values or any(not 0 <= v <= 2 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be in [0, 2], got {text!r}")
    return values


def at_least(text: str, cast: type[int] | type[float], minimum: int, what: str) -> int | float:
    try:
        value = cast(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from exc
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value:g}")
    return value


def positive(text: str) -> int:
    return int(at_least(text, int, 1, "a whole number"))


def non_negative(text: str) -> float:
    return float(at_least(text, float, 0, "a number"))


def ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {text!r}")
    return values


def pairs(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


__all__ = ["at_least", "floats", "ints", "non_negative", "pairs", "positive"]
