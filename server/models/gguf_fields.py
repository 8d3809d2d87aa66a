"""Reading a GGUF file's key-value fields as Python values."""

from __future__ import annotations

from typing import Any

# SentencePiece's token types, which GGUF reuses (tokenizer.ggml.token_type): pieces kept whole, never merged
CONTROL, USER_DEFINED = 3, 4


class GGUFImportError(RuntimeError):
    """A GGUF file that cannot be served: not GGUF, damaged, or holding what we cannot import (named)."""


def field(reader: Any, key: str, default: Any = None) -> Any:
    """The field's value (a str, a number, or a list of them), or `default` when the file lacks it. (gguf
    is imported here, not above: serving, which imports the export's entry points, needs no gguf.)"""
    from gguf import GGUFValueType

    found = reader.fields.get(key)
    if found is None:
        return default
    if found.types[0] == GGUFValueType.ARRAY:
        if found.types[-1] == GGUFValueType.STRING:
            return [bytes(found.parts[i]).decode("utf-8", errors="replace") for i in found.data]
        return [found.parts[i].tolist()[0] for i in found.data]
    if found.types[0] == GGUFValueType.STRING:
        return bytes(found.parts[found.data[0]]).decode("utf-8", errors="replace")
    return found.parts[found.data[0]].tolist()[0]
