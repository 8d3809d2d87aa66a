"""The model_repository layout and its manifests: the one place that knows where an exported model's
files lie, read by the embedded backend and by Triton's python backend alike (triton_config.py makes
each export a Triton model: config.pbtxt beside the manifest, a model.py shim in the version folder).

    model_repository/<name>/manifest.json    what the model is and how to prompt it
    model_repository/<name>/config.pbtxt     Triton's model config
    model_repository/<name>/1/model.onnx     the graph (+ model.onnx.data), Triton's version folder
    model_repository/<name>/1/tokenizer.json
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST = "manifest.json"
VERSION_DIR = "1"
# Bumped when an export gains something the server relies on; older exports are rebuilt.
# 2: logits_to_keep in fused graphs, chat_template.
# 3: optimum's graphs quantised weight-only (MatMulNBits): their INT8 from before quantised
#    activations over the whole batch, so under continuous batching a sample's text would depend on
#    its neighbours. Fused graphs of format 2 are unchanged, so they need no rebuild.
# 4: fused graphs take logits_to_keep as a plain input (no default), so that a prefill on top of a
#    cached past binds it and runs in place: before, every multi-token prefill copied the whole past.
FORMAT_VERSION = 4
_OLDEST_SERVED = {"genai-builder": 4, "optimum": 3}


class ModelNotExported(LookupError):
    """The store has no complete export under that name."""


class ContentChanged(ValueError):
    """An export's files are not the ones its manifest was written for."""


class FimTokens(BaseModel):
    prefix: str
    suffix: str
    middle: str
    repo_name: str | None = Field(None, description="Starts the other files of the repository (StarCoder2, Qwen-Coder)")
    file_sep: str | None = Field(None, description="Starts each file: its path, a newline, its code")


class Manifest(BaseModel):
    name: str
    architecture: str = Field(description="Hugging Face model_type, e.g. gemma3_text, llama, codegen")
    parameters: int = Field(description="Parameter count of the source checkpoint (tied weights once)")
    precision: Literal["int8", "int4", "fp32", "fp16", "gguf"] = Field(
        description="fp16 is the CUDA graph; gguf holds a GGUF file's own quantised blocks"
    )
    graph: Literal["genai-builder", "optimum"] = Field(description="Which exporter wrote the ONNX graph")
    context_length: int
    vocab_size: int
    eos_token_ids: list[int]
    prompt_prefix_ids: list[int] = Field(description="Token ids put before raw code (BOS, <|endoftext|>, ...)")
    source: str = Field(description="Where the weights came from: a GGUF file or a checkpoint folder")
    source_file: str = Field("", description="the source GGUF file's path, for exports from one")
    source_sha256: str = Field("", description="sha256 of the source GGUF file, for exports from one")
    requantised: list[str] = Field(
        default_factory=list,
        description="precision gguf: the file's tensors whose block type has no exact form here, requantised to 8 bits",
    )
    chat_template: str | None = Field(None, description="Jinja chat template, for models that chat")
    content_sha256: str = Field(
        "", description="sha256 over the version folder's files (names and bytes), checked by `slipstream models verify`"
    )
    fim: FimTokens | None = Field(None, description="Fill-in-the-middle sentinel tokens, for models that have them")
    onnx_file: str = f"{VERSION_DIR}/model.onnx"
    tokenizer_file: str = f"{VERSION_DIR}/tokenizer.json"
    format_version: int = 1  # exports before the field existed are version 1


def model_dir(repository: Path, name: str) -> Path:
    return repository / name


def write_manifest(repository: Path, manifest: Manifest) -> Path:
    """Written last by an export, so a manifest on disk means the export is complete."""
    path = model_dir(repository, manifest.name) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifest.model_dump_json(indent=2) + "\n")
    tmp.replace(path)
    return path


def read_manifest(repository: Path, name: str) -> Manifest:
    path = model_dir(repository, name) / MANIFEST
    if not path.is_file():
        raise ModelNotExported(f"no exported model {name!r} in {repository} (run `slipstream export {name}`)")
    manifest = Manifest.model_validate(json.loads(path.read_text()))
    if manifest.format_version < _OLDEST_SERVED.get(manifest.graph, FORMAT_VERSION):
        raise ModelNotExported(
            f"export of {name!r} is from an older slipstream (format {manifest.format_version}, now "
            f"{FORMAT_VERSION}): export it again (`slipstream export {name} --force`)"
        )
    for rel in (manifest.onnx_file, manifest.tokenizer_file):
        if not (path.parent / rel).is_file():
            raise ModelNotExported(f"export of {name!r} is incomplete: {rel} is missing (export it again)")
    return manifest


def exported_models(repository: Path) -> list[Manifest]:
    if not repository.is_dir():
        return []
    found = []
    for child in sorted(repository.iterdir()):
        try:
            found.append(read_manifest(repository, child.name))
        except ModelNotExported:
            continue
    return found


# Triton's python backend loads <version>/model.py: a deployment shim beside the model, not part of it
TRITON_MODEL_PY = "model.py"


def content_hash(folder: Path) -> str:
    """One digest of every file under `folder` (Triton's model.py shim and Python's bytecode caches aside):
    its relative name, then its bytes, in sorted order. Two exports with the same hash serve the same model."""
    digest = hashlib.sha256()
    for path in sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder) != Path(TRITON_MODEL_PY) and "__pycache__" not in p.relative_to(folder).parts
    ):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def check_content(repository: Path, name: str) -> Manifest:
    """Raise ContentChanged, naming the model, when the files of its version folder no longer hash to
    the manifest's content_sha256. Run by `slipstream models verify`, not at every load: hashing a
    multi-GB graph would add seconds to each server start."""
    manifest = read_manifest(repository, name)
    folder = model_dir(repository, name) / VERSION_DIR
    if not manifest.content_sha256:
        raise ContentChanged(
            f"the manifest of {name!r} records no content hash (an export from before slipstream "
            f"kept one): export it again (`slipstream export {name} --force`)"
        )
    actual = content_hash(folder)
    if actual != manifest.content_sha256:
        raise ContentChanged(
            f"the files of {name!r} changed since it was exported: {folder} hashes to "
            f"{actual[:12]}..., its manifest says {manifest.content_sha256[:12]}... "
            f"(export it again: `slipstream export {name} --force`)"
        )
    return manifest


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
