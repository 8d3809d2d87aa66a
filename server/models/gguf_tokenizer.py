"""A GGUF file's tokenizer rebuilt as a Hugging Face fast tokenizer that encodes as llama.cpp does.

GGUF carries two kinds (`tokenizer.ggml.model`):
- "gpt2": byte-level BPE (Qwen, StarCoder, SmolLM, DeepSeek-Coder, Llama 3). Its vocabulary and merges are
  in the file; how text is split before the merges is not, only named (`tokenizer.ggml.pre`). llama.cpp
  keeps one list of splitting regexes per name, and so do we (_PRE_SPLITS): transformers' own GGUF
  converter splits every file as GPT-2 does, which joins digits that Qwen, StarCoder and SmolLM split.
- "llama": SentencePiece BPE with byte fallback (Llama 2, CodeLlama, Gemma), rebuilt as a SentencePiece
  model from the token list, scores and types, then converted by transformers.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from server.models.gguf_fields import CONTROL, USER_DEFINED, GGUFImportError, field

__all__ = ["build_tokenizer", "PRE_TOKENIZERS"]


_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CASED = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = _CASED + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_QWEN2 = _CASED + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_DIGITS_THEN_GPT2 = (r"\p{N}", _GPT2)
# `tokenizer.ggml.pre` -> the regexes llama.cpp splits text with, applied one after the other (llama-vocab.cpp).
_PRE_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (_LLAMA3,),
    "llama3": (_LLAMA3,),
    "llama-v3": (_LLAMA3,),
    "llama-bpe": (_LLAMA3,),
    "smaug-bpe": (_LLAMA3,),
    "gpt-2": (_GPT2,),
    "gpt2": (_GPT2,),
    "phi-2": (_GPT2,),
    "qwen2": (_QWEN2,),
    "deepseek-r1-qwen": (_QWEN2,),
    "starcoder": _DIGITS_THEN_GPT2,
    "refact": _DIGITS_THEN_GPT2,
    "smollm": _DIGITS_THEN_GPT2,
    "codeshell": _DIGITS_THEN_GPT2,
    "command-r": _DIGITS_THEN_GPT2,
    "deepseek-coder": (r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+", r"\p{N}"),
}
PRE_TOKENIZERS = frozenset(_PRE_SPLITS)


def build_tokenizer(reader: Any, source: str) -> Any:
    """A PreTrainedTokenizerFast for the file's tokenizer: ids equal to llama.cpp's, no BOS added
    (the manifest's prompt prefix adds it), its special tokens as the file declares them."""
    kind = field(reader, "tokenizer.ggml.model")
    tokens: list[str] | None = field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise GGUFImportError(f"{source}: the file carries no tokenizer (tokenizer.ggml.tokens)")
    names = _special_names(reader, tokens, source)
    if kind == "gpt2":
        return _byte_level_bpe(reader, tokens, names, source)
    if kind == "llama":
        return _sentencepiece_bpe(reader, tokens, names)
    raise GGUFImportError(f"{source}: tokenizer type {kind!r} is not supported (byte-level BPE 'gpt2' and SentencePiece 'llama' are)")


def _special_names(reader: Any, tokens: list[str], source: str) -> dict[str, str]:
    def name(key: str, default: int | None = None) -> str | None:
        index = field(reader, f"tokenizer.ggml.{key}_token_id", default)
        if index is None:
            return None
        if not 0 <= index < len(tokens):
            raise GGUFImportError(f"{source}: tokenizer.ggml.{key}_token_id {index} is outside the vocabulary")
        return tokens[index]

    eos = name("eos")
    if eos is None:
        raise GGUFImportError(f"{source}: the tokenizer names no EOS token (tokenizer.ggml.eos_token_id)")
    bos = name("bos") or eos
    return {"bos": bos, "eos": eos, "pad": name("padding") or eos, "unk": name("unknown") or eos}


def _byte_level_bpe(reader: Any, tokens: list[str], names: dict[str, str], source: str) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = field(reader, "tokenizer.ggml.pre", "default")
    if pre not in _PRE_SPLITS:
        raise GGUFImportError(f"{source}: pre-tokenizer {pre!r} is not known (known: {', '.join(sorted(_PRE_SPLITS))})")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", [])]
    model = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False)
    tokenizer = Tokenizer(model)
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_SPLITS[pre]]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    types: list[int] = field(reader, "tokenizer.ggml.token_type", [])
    # control and user-defined tokens are whole pieces, never merged from bytes (as llama.cpp keeps them)
    tokenizer.add_tokens(
        [
            AddedToken(t, special=kind == CONTROL, normalized=False)
            for t, kind in zip(tokens, types, strict=False)
            if kind in (CONTROL, USER_DEFINED)
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=names["bos"],
        eos_token=names["eos"],
        pad_token=names["pad"],
        model_input_names=["input_ids", "attention_mask"],
    )


def _sentencepiece_bpe(reader: Any, tokens: list[str], names: dict[str, str]) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as spm
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast, PreTrainedTokenizerFast

    scores: list[float] = field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens)
    types: list[int] = field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.split_digits = True
    proto.trainer_spec.unk_id = field(reader, "tokenizer.ggml.unknown_token_id", 0)
    proto.trainer_spec.bos_id = tokens.index(names["bos"])
    proto.trainer_spec.eos_id = tokens.index(names["eos"])
    proto.trainer_spec.pad_id = tokens.index(names["pad"])
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(field(reader, "tokenizer.ggml.add_space_prefix", False))
    proto.normalizer_spec.remove_extra_whitespaces = False
    for piece, score, kind in zip(tokens, scores, types, strict=False):
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    # SentencePiece refuses a model whose unk id is not an UNKNOWN piece (Gemma's GGUF marks <unk> as
    # control); with byte fallback no text ever encodes to it, so the ids stay llama.cpp's.
    proto.pieces[proto.trainer_spec.unk_id].type = spm.ModelProto.SentencePiece.UNKNOWN
    arch = field(reader, "general.architecture", "")
    cls = GemmaTokenizerFast if arch.startswith("gemma") else LlamaTokenizerFast
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "tokenizer.model"
        model_file.write_bytes(proto.SerializeToString())
        converted = cls(
            vocab_file=str(model_file),
            bos_token=names["bos"],
            eos_token=names["eos"],
            pad_token=names["pad"],
            add_prefix_space=proto.normalizer_spec.add_dummy_prefix,
        )
    # kept as a plain fast tokenizer: the converted class's config would ask for the SentencePiece file again
    return PreTrainedTokenizerFast(
        tokenizer_object=converted.backend_tokenizer,
        bos_token=names["bos"],
        eos_token=names["eos"],
        pad_token=names["pad"],
        model_input_names=["input_ids", "attention_mask"],
    )
