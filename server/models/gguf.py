"""GGUF -> Hugging Face checkpoint folder, with the tokenizer repaired.

transformers dequantises GGUF weights correctly but converts both bundled tokenizers wrongly
(shared/reference/models-and-stack.md): SmolLM2's gets `<|im_start|>` as BOS and EOS, Gemma-3's a
Unigram model that splits text into far too many pieces. We rebuild each from the GGUF's own fields;
the result encodes exactly as llama.cpp does (tests compare against its ids).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from gguf import GGUFReader, GGUFValueType


class GGUFImportError(RuntimeError):
    pass


def _field(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    if field.types[0] == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i].tolist()[0] for i in field.data]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]].tolist()[0]


def repair_tokenizer(gguf_path: Path) -> Any:
    """A PreTrainedTokenizerFast built from the GGUF's tokenizer fields, with its special tokens as the
    GGUF declares them."""
    reader = GGUFReader(gguf_path)
    kind = _field(reader, "tokenizer.ggml.model")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    bos = tokens[_field(reader, "tokenizer.ggml.bos_token_id")]
    eos = tokens[_field(reader, "tokenizer.ggml.eos_token_id")]
    pad_id = _field(reader, "tokenizer.ggml.padding_token_id")
    pad = tokens[pad_id] if pad_id is not None else eos
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token", False))
    if kind == "gpt2":
        return _repair_byte_level_bpe(gguf_path, bos=bos, eos=eos, pad=pad)
    if kind == "llama":
        return _sentencepiece_bpe(reader, tokens, bos=bos, eos=eos, pad=pad, add_bos=add_bos)
    raise GGUFImportError(f"{gguf_path.name}: tokenizer type {kind!r} is not supported yet")


def _repair_byte_level_bpe(gguf_path: Path, *, bos: str, eos: str, pad: str) -> Any:
    from tokenizers import processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # The vocabulary and merges transformers converts are right; its special tokens and post-processor
    # (which adds a BOS the GGUF says not to add) are not.
    converted = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    backend = converted.backend_tokenizer
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        model_input_names=["input_ids", "attention_mask"],
    )


def _sentencepiece_bpe(
    reader: GGUFReader, tokens: list[str], *, bos: str, eos: str, pad: str, add_bos: bool
) -> Any:
    from sentencepiece import sentencepiece_model_pb2 as spm
    from transformers import GemmaTokenizerFast, LlamaTokenizerFast

    scores: list[float] = _field(reader, "tokenizer.ggml.scores")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.vocab_size = len(tokens)
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.split_digits = True
    proto.trainer_spec.unk_id = _field(reader, "tokenizer.ggml.unknown_token_id", 0)
    proto.trainer_spec.bos_id = tokens.index(bos)
    proto.trainer_spec.eos_id = tokens.index(eos)
    proto.trainer_spec.pad_id = tokens.index(pad)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", False))
    proto.normalizer_spec.remove_extra_whitespaces = False
    for piece, score, kind in zip(tokens, scores, types, strict=False):
        # GGUF token types use SentencePiece's numbering (normal, unknown, control, user-defined, unused, byte).
        entry = proto.pieces.add()
        entry.piece, entry.score, entry.type = piece, score, kind
    # SentencePiece refuses a model whose unk id is not an UNKNOWN piece (Gemma's GGUF marks <unk> as
    # control); with byte fallback no text ever encodes to it, so the ids stay llama.cpp's.
    proto.pieces[proto.trainer_spec.unk_id].type = spm.ModelProto.SentencePiece.UNKNOWN
    arch = _field(reader, "general.architecture", "")
    cls = GemmaTokenizerFast if arch.startswith("gemma") else LlamaTokenizerFast
    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "tokenizer.model"
        model_file.write_bytes(proto.SerializeToString())
        return cls(vocab_file=str(model_file), bos_token=bos, eos_token=eos, pad_token=pad, add_bos_token=add_bos)


def gguf_chat_template(gguf_path: Path) -> str | None:
    """The chat template the GGUF carries (tokenizer.chat_template); base models have none."""
    return _field(GGUFReader(gguf_path), "tokenizer.chat_template")


def import_gguf(gguf_path: Path, out_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Write a Hugging Face checkpoint folder (fp32 weights + repaired tokenizer) for a GGUF file."""
    from transformers import AutoModelForCausalLM

    log(f"  dequantising {gguf_path.name} with transformers")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model.save_pretrained(out_dir)
    log("  rebuilding the tokenizer from the GGUF fields")
    tokenizer = repair_tokenizer(gguf_path)
    tokenizer.save_pretrained(out_dir)
    # save_pretrained may copy the whole GGUF as tokenizer.model: it is not needed and is hundreds of MB.
    leftover = out_dir / "tokenizer.model"
    if leftover.is_file() and leftover.stat().st_size > 50_000_000:
        leftover.unlink()
    return out_dir
