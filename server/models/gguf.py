"""A GGUF file as a model source: what it is (architecture, context, tokenizer, special and
fill-in-the-middle tokens, chat template, block types), checked before anything is written, and its
weights as a Hugging Face checkpoint folder for the graph builders.

transformers dequantises GGUF weights correctly but converts tokenizers wrongly (gguf_tokenizer.py
rebuilds them) and cannot read Gemma 1 files (CodeGemma): `_teach_transformers_gemma` adds that
architecture to its GGUF tables, the way it reads Gemma 2.
"""

from __future__ import annotations

import hashlib
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

from server.models.gguf_fields import CONTROL, USER_DEFINED, GGUFImportError, field
from server.models.store import FimTokens

__all__ = ["ARCHITECTURES", "GGUFImportError", "GGUFSource", "open_gguf", "import_gguf", "file_sha256"]

# The file's general.architecture -> transformers' model_type, for every architecture both transformers'
# GGUF reader (with Gemma 1 taught) and our graph builders take.
ARCHITECTURES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "starcoder2": "starcoder2",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
}
_MAGIC = b"GGUF"

# Tokens llama.cpp ends a generation on when the vocabulary has them (besides EOS/EOT by id): the ends of
# a turn, of a text, of a file in a repository layout.
_END_TEXTS = (
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<EOT>",
    "\u2581<EOT>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<|fim_pad|>",
    "<|file_sep|>",
    "<file_sep>",
)
# Fill-in-the-middle sentinels by text, for files written before the fim_* keys existed (llama.cpp's own fallback).
_FIM_TEXTS = {
    "pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "\u2581<PRE>", "<PRE>"),
    "suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "\u2581<SUF>", "<SUF>"),
    "mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "\u2581<MID>", "<MID>"),
    "rep": ("<|repo_name|>", "<repo_name>", "<reponame>"),
    "sep": ("<|file_sep|>", "<file_sep>", "<|file_separator|>"),
}
_FIM_KEYS = {
    "pre": ("fim_pre", "prefix"),
    "suf": ("fim_suf", "suffix"),
    "mid": ("fim_mid", "middle"),
    "rep": ("fim_rep",),
    "sep": ("fim_sep",),
}


@dataclass(frozen=True)
class GGUFSource:
    """What a GGUF file says about its model, read without loading its weights; and its reader, kept for
    what comes next (the tokenizer, the blocks): parsing a large vocabulary's header takes seconds."""

    path: Path
    reader: Any = dataclass_field(repr=False, compare=False)  # gguf.GGUFReader, over the mapped file
    tokens: list[str] = dataclass_field(repr=False)  # the vocabulary's texts, by id
    architecture: str  # the file's general.architecture
    model_type: str  # transformers' name for it
    context_length: int
    vocab_size: int
    prompt_prefix_ids: list[int]  # BOS where the file says to add it
    eos_token_ids: list[int]
    fim: FimTokens | None
    chat_template: str | None
    tensor_types: dict[str, int] = dataclass_field(default_factory=dict)  # GGML type -> tensor count

    @property
    def description(self) -> str:
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        return f"{self.architecture}, context {self.context_length}, vocabulary {self.vocab_size}, tensors: {kinds}"


def open_gguf(path: Path) -> GGUFSource:
    """Read and check a GGUF file; GGUFImportError, naming what is wrong, for anything we cannot serve."""
    reader = _reader(path)
    arch = field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFImportError(f"{path.name}: architecture {arch!r} cannot be served yet (supported: {', '.join(sorted(ARCHITECTURES))})")
    tokens: list[str] = field(reader, "tokenizer.ggml.tokens") or []
    if not tokens:
        raise GGUFImportError(f"{path.name}: the file carries no tokenizer (tokenizer.ggml.tokens)")
    types: list[int] = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    context = field(reader, f"{arch}.context_length")
    if not isinstance(context, int) or context <= 0:
        raise GGUFImportError(f"{path.name}: no {arch}.context_length")
    bos = field(reader, "tokenizer.ggml.bos_token_id")
    # llama.cpp's defaults when the file is silent: SentencePiece vocabularies add BOS, byte-level BPE ones do not
    add_bos = field(reader, "tokenizer.ggml.add_bos_token", field(reader, "tokenizer.ggml.model") == "llama")
    return GGUFSource(
        path=path,
        reader=reader,
        tokens=tokens,
        architecture=arch,
        model_type=ARCHITECTURES[arch],
        context_length=context,
        vocab_size=len(tokens),
        prompt_prefix_ids=[bos] if add_bos and bos is not None else [],
        eos_token_ids=_end_ids(reader, tokens, types, path.name),
        fim=_fim(reader, tokens),
        chat_template=field(reader, "tokenizer.chat_template"),
        tensor_types=dict(Counter(t.tensor_type.name for t in reader.tensors)),
    )


def _reader(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise GGUFImportError(f"{path}: no such file")
    with path.open("rb") as f:
        if f.read(4) != _MAGIC:
            raise GGUFImportError(f"{path.name} is not a GGUF file (it does not start with {_MAGIC!r})")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the reader fails in many ways on a damaged file: each is the same to the user
        raise GGUFImportError(f"{path.name} is damaged or truncated ({type(exc).__name__}: {exc})") from exc
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size or tensor.data.nbytes != tensor.n_bytes:
            raise GGUFImportError(f"{path.name} is truncated: tensor {tensor.name} ends past the file's {size} bytes")
    return reader


def _end_ids(reader: Any, tokens: list[str], types: list[int], source: str) -> list[int]:
    ids: list[int] = []
    for key in ("eos", "eot", "eom"):
        index = field(reader, f"tokenizer.ggml.{key}_token_id")
        if isinstance(index, int) and 0 <= index < len(tokens) and index not in ids:
            ids.append(index)
    if not ids:
        raise GGUFImportError(f"{source}: the tokenizer names no EOS token (tokenizer.ggml.eos_token_id)")
    control = {t: i for i, (t, kind) in enumerate(zip(tokens, types, strict=False)) if kind in (CONTROL, USER_DEFINED)}
    ids += [control[t] for t in _END_TEXTS if t in control and control[t] not in ids]
    return ids


def _fim(reader: Any, tokens: list[str]) -> FimTokens | None:
    found: dict[str, str] = {}
    index = {t: i for i, t in enumerate(tokens)}
    for role, keys in _FIM_KEYS.items():
        ids = [field(reader, f"tokenizer.ggml.{key}_token_id") for key in keys]
        chosen = next((i for i in ids if isinstance(i, int) and 0 <= i < len(tokens)), None)
        if chosen is None:
            chosen = next((index[t] for t in _FIM_TEXTS[role] if t in index), None)
        if chosen is not None:
            found[role] = tokens[chosen]
    if not all(role in found for role in ("pre", "suf", "mid")):
        return None
    sep = found.get("sep")
    return FimTokens(
        prefix=found["pre"], suffix=found["suf"], middle=found["mid"], file_sep=sep, repo_name=found.get("rep") if sep else None
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def import_gguf(gguf_path: Path, out_dir: Path, log: Callable[[str], None] = print, source: GGUFSource | None = None) -> Path:
    """Write a Hugging Face checkpoint folder (fp32 weights + the rebuilt tokenizer) for a GGUF file
    (`source`: the file already opened, by open_gguf)."""
    from transformers import AutoModelForCausalLM

    from server.models.gguf_tokenizer import build_tokenizer

    source = source or open_gguf(gguf_path)
    log(f"  rebuilding the tokenizer from the GGUF fields ({gguf_path.name})")
    tokenizer = build_tokenizer(source.reader, gguf_path.name)
    if source.architecture == "gemma":
        _teach_transformers_gemma()
    log(f"  dequantising {gguf_path.name} with transformers")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if source.architecture == "phi3" and getattr(model.config, "rope_scaling", None) is None:
        # transformers leaves Phi-3's original context at its class default (4096): a file without
        # LongRoPE factors has one context, and the builder takes a difference for LongRoPE
        model.config.original_max_position_embeddings = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # save_pretrained may copy the whole GGUF as tokenizer.model: it is not needed and is hundreds of MB.
    leftover = out_dir / "tokenizer.model"
    if leftover.is_file() and leftover.stat().st_size > 50_000_000:
        leftover.unlink()
    return out_dir


def _teach_transformers_gemma() -> None:
    """transformers 4.57 reads Gemma 2 and 3 GGUF files but not Gemma 1 (CodeGemma): the same keys and
    the same norm offset (llama.cpp stores Gemma's RMSNorm weights plus one), under the name "gemma"."""
    from transformers import modeling_gguf_pytorch_utils as reader
    from transformers.integrations import ggml

    if "gemma" in ggml.GGUF_CONFIG_MAPPING:
        return
    gemma2 = typing.cast(dict[str, str | None], ggml.GGUF_CONFIG_MAPPING["gemma2"])
    keys = {k: v for k, v in gemma2.items() if k != "attention.sliding_window"}
    ggml.GGUF_CONFIG_MAPPING["gemma"] = keys
    reader.GGUF_TO_TRANSFORMERS_MAPPING["config"]["gemma"] = keys
    reader.GGUF_SUPPORTED_ARCHITECTURES.append("gemma")
    reader.TENSOR_PROCESSORS["gemma"] = reader.Gemma2TensorProcessor
