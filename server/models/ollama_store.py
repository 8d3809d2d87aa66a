"""The GGUF behind a model Ollama pulled: Ollama's store keeps a manifest per name and tag, whose
model layer names a blob (the GGUF file itself) by its sha256.

    $OLLAMA_MODELS (default ~/.ollama/models)/manifests/<host>/<namespace>/<model>/<tag>
    $OLLAMA_MODELS/blobs/sha256-<hex>
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["OllamaModelNotFound", "models_dir", "find_gguf", "store_name"]

_HOST, _NAMESPACE, _TAG = "registry.ollama.ai", "library", "latest"
_MODEL_LAYER = "application/vnd.ollama.image.model"


class OllamaModelNotFound(LookupError):
    """The name is not pulled in this Ollama store, or its manifest or blob is missing or damaged."""


def models_dir() -> Path:
    """Where Ollama keeps its models: $OLLAMA_MODELS, else ~/.ollama/models (its own default)."""
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")


def _parts(reference: str) -> tuple[str, str, str, str]:
    """ "qwen2.5-coder:1.5b" -> (host, namespace, model, tag), with Ollama's defaults filled in."""
    name, _, tag = reference.strip().partition(":")
    pieces = [p for p in name.split("/") if p]
    if not pieces or len(pieces) > 3 or not all(_safe(p) for p in [*pieces, tag or _TAG]):
        raise OllamaModelNotFound(f"{reference!r} is not an Ollama model name (NAME[:TAG], e.g. qwen2.5-coder:1.5b)")
    host, namespace = _HOST, _NAMESPACE
    if len(pieces) == 3:
        host, namespace = pieces[0], pieces[1]
    elif len(pieces) == 2:
        namespace = pieces[0]
    return host, namespace, pieces[-1], tag or _TAG


def _safe(piece: str) -> bool:
    return piece not in (".", "..") and all(c.isalnum() or c in "._-" for c in piece)


def store_name(reference: str) -> str:
    """A model-repository name for an Ollama reference: "qwen2.5-coder:1.5b" -> "qwen2.5-coder-1.5b"."""
    _, _, model, tag = _parts(reference)
    return model if tag == _TAG else f"{model}-{tag}"


def find_gguf(reference: str, root: Path | None = None) -> Path:
    """The GGUF blob of a pulled model; OllamaModelNotFound naming what was looked for, and what is pulled."""
    root = root or models_dir()
    host, namespace, model, tag = _parts(reference)
    manifest_path = root / "manifests" / host / namespace / model / tag
    if not manifest_path.is_file():
        pulled = pulled_models(root)
        listing = ", ".join(pulled) if pulled else "none"
        raise OllamaModelNotFound(
            f"{reference!r} is not pulled in the Ollama store {root} (no {manifest_path.relative_to(root)}); pulled there: {listing}"
        )
    try:
        layers = json.loads(manifest_path.read_text())["layers"]
        digest = next(layer["digest"] for layer in layers if layer.get("mediaType") == _MODEL_LAYER)
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise OllamaModelNotFound(f"{manifest_path} is not an Ollama manifest with a model layer ({exc!r})") from exc
    algorithm, _, hexdigest = str(digest).partition(":")
    if algorithm != "sha256" or not hexdigest.isalnum():
        raise OllamaModelNotFound(f"{manifest_path}: model layer digest {digest!r} is not a sha256")
    blob = root / "blobs" / f"sha256-{hexdigest}"
    if not blob.is_file():
        raise OllamaModelNotFound(f"{reference!r}: its model blob {blob} is missing (pull it again: ollama pull {reference})")
    return blob


def pulled_models(root: Path | None = None) -> list[str]:
    """name:tag of every manifest in the store (the library's without their host and namespace)."""
    base = (root or models_dir()) / "manifests"
    if not base.is_dir():
        return []
    found = []
    for path in sorted(p for p in base.glob("*/*/*/*") if p.is_file()):
        host, namespace, model, tag = path.relative_to(base).parts
        prefix = "" if (host, namespace) == (_HOST, _NAMESPACE) else (f"{namespace}/" if host == _HOST else f"{host}/{namespace}/")
        found.append(f"{prefix}{model}:{tag}")
    return found
