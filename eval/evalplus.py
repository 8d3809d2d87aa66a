"""EvalPlus-format problems (HumanEval+, MBPP+): a record's `base_input` and `plus_input` become one
test program that compares the candidate's output on every input with the canonical solution's, as
EvalPlus's differential testing does.

The program checks the base inputs first and then says so on stderr (BASE_PASSED), then the plus
inputs: one execution gives both verdicts, "base" (the original benchmark's inputs) and "plus" (base
and EvalPlus's extra inputs, the figure EvalPlus reports as HumanEval+ / MBPP+).

Kept from EvalPlus (evalplus/evaluate.py): exact equality, else for float outputs (a float, or a
list/tuple of floats) the same type and length and numpy.allclose's rule with rtol 1e-7 and the
record's atol (1e-6 where the record says 0); HumanEval's find_zero judged by |poly(xs, x)| <= atol.
Not kept, and said in the report: EvalPlus's per-input time limits (derived from the reference's own
time; here one wall-clock limit for the whole program), its MBPP special oracles, and its MBPP input
deserialisation (inputs arrive as JSON gives them, lists for tuples; the reference sees the same)."""

from __future__ import annotations

import json
from typing import Any

BASE_PASSED = "slipstream: base inputs passed"
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "base_input", "plus_input")

_CHECK = """
def check(candidate):
    import copy as _copy
    import json as _json
    import sys as _sys

    _reference = {{}}
    exec(compile({reference!r}, "<canonical solution>", "exec"), _reference)
    _expected_of = _reference[{entry_point!r}]
    _atol = {atol!r}

    def _is_floats(value):
        if isinstance(value, float):
            return True
        return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(v, float) for v in value)

    def _close(out, exp, atol):
        if type(out) is not type(exp):
            return False
        pairs = list(zip(out, exp)) if isinstance(exp, (list, tuple)) else [(out, exp)]
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False
        return all(abs(o - e) <= atol + 1e-07 * abs(e) for o, e in pairs)

    def _run(inputs, stage):
        for index, args in enumerate(inputs):
            expected = _expected_of(*_copy.deepcopy(args))
            got = candidate(*_copy.deepcopy(args))
            if {entry_point!r} == "find_zero" and "poly" in _reference:
                assert abs(_reference["poly"](*_copy.deepcopy(args), got)) <= (_atol or 1e-6), f"{{stage}} input {{index}}"
                continue
            if got == expected:
                continue
            atol = 1e-6 if _atol == 0 and _is_floats(expected) else _atol
            assert atol != 0 and _close(got, expected, atol), f"{{stage}} input {{index}}: {{got!r:.200}} != {{expected!r:.200}}"

    _run(_json.loads({base!r}), "base")
    _sys.stderr.write({marker!r} + "\\n")
    _sys.stderr.flush()
    _run(_json.loads({plus!r}), "plus")
"""


def is_evalplus(row: dict[str, Any]) -> bool:
    return "base_input" in row or "plus_input" in row


def check_code(row: dict[str, Any]) -> str:
    """The `test` of an EvalPlus record: a check(candidate) over its base, then its plus inputs."""
    for name in ("base_input", "plus_input"):
        if not isinstance(row[name], list) or not all(isinstance(args, list) for args in row[name]):
            raise ValueError(f"{name} must be a list of argument lists")
    atol = row.get("atol", 0) or 0
    if not isinstance(atol, (int, float)) or atol < 0:
        raise ValueError(f"atol must be a number >= 0, got {atol!r}")
    return _CHECK.format(
        reference=row["prompt"] + row["canonical_solution"],
        entry_point=row["entry_point"],
        atol=float(atol),
        base=json.dumps(row["base_input"]),
        plus=json.dumps(row["plus_input"]),
        marker=BASE_PASSED,
    )


def base_passed(passed: bool, stderr: str) -> bool:
    """Whether a program passed its base inputs: it passed all, or it said so before the plus inputs."""
    return passed or BASE_PASSED in stderr
