"""The vocabularies of tests/tiny_gguf.py's files, written as llama.cpp's converter writes them: the byte-level
BPE of tests/tiny_model.py ("gpt2" in GGUF, split per `tokenizer.ggml.pre` as llama.cpp splits), or a
SentencePiece BPE with byte fallback trained on the same corpus ("llama" in GGUF)."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from typing import Any

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as spm_pb
from tokenizers import AddedToken, Regex, Tokenizer, pre_tokenizers

from tests.tiny_model import EOS, _corpus, _train_tokenizer

SPM_VOCAB_SIZE = 500  # 256 byte pieces, the control pieces, ~240 merges

# Splitting regexes of the Hugging Face tokenizer.json files the llama.cpp `pre` names stand for.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


# `tokenizer.ggml.pre` -> the pre-tokenizer that splits text the way llama.cpp does for that name, so the
# TinyGGUF's tokenizer gives the ids llama.cpp would (the vocabulary and merges stay tiny_model's).
_PRE_TOKENIZERS: dict[str, Callable[[], pre_tokenizers.PreTokenizer]] = {
    "gpt-2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False),  # GPT-2's regex, as tiny_model trains
    "starcoder": lambda: pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    ),
    "qwen2": lambda: _split_then_bytes(_QWEN2_SPLIT),
    "llama-bpe": lambda: _split_then_bytes(_LLAMA3_SPLIT),
}


@functools.lru_cache(maxsize=1)
def _bpe_json() -> str:
    return _train_tokenizer().backend_tokenizer.to_str()  # trained once; each file gets a fresh copy


def write_bpe(writer: gguf.GGUFWriter, pre: str, add_bos: bool, fim: dict[str, str]) -> tuple[Tokenizer, dict[str, int], bool]:
    tok = Tokenizer.from_str(_bpe_json())
    tok.pre_tokenizer = _PRE_TOKENIZERS[pre]()
    tok.add_special_tokens([AddedToken(text, special=True, normalized=False) for text in fim.values()])
    vocab = tok.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert [vocab[t] for t in tokens] == list(range(len(tokens))), "the vocabulary has gaps"
    controls = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    # the converter types added special tokens CONTROL and the rest NORMAL (byte-level BPE has no byte type)
    writer.add_token_types([gguf.TokenType.CONTROL if t in controls else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    eos = vocab[EOS]  # tiny_model's only special token is BOS, EOS and padding at once
    special = {"bos": eos, "eos": eos, "pad": eos} | {name: vocab[text] for name, text in fim.items()}
    return tok, special, add_bos


@functools.lru_cache(maxsize=2)
def _spm_model(gemma: bool) -> bytes:
    """A SentencePiece BPE trained on tiny_model's corpus with Llama's settings (byte fallback, digits
    split, no normalisation) or Gemma's (no dummy prefix, <pad> <eos> <bos> <unk> first)."""
    ids: dict[str, Any] = (
        dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>")
        if gemma
        else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    )
    lines = [line for text in _corpus() for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=SPM_VOCAB_SIZE,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=not gemma,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **ids,
    )
    return model.getvalue()


def write_spm(writer: gguf.GGUFWriter, architecture: str, fim: dict[str, str]) -> tuple[spm.SentencePieceProcessor, dict[str, int], bool]:
    gemma = architecture.startswith("gemma")
    proto = spm_pb.ModelProto()
    proto.ParseFromString(_spm_model(gemma))
    for text in fim.values():  # the converter's added special tokens: CONTROL, score -1000
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, -1000.0, spm_pb.ModelProto.SentencePiece.CONTROL
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([p.piece for p in proto.pieces])
    writer.add_token_scores([p.score for p in proto.pieces])
    writer.add_token_types([int(p.type) for p in proto.pieces])  # GGUF's TokenType is SentencePiece's numbering
    writer.add_add_space_prefix(not gemma)
    # Llama's model has no pad piece: <unk> pads (a reader such as transformers' Phi-3 needs an in-vocabulary pad)
    pad = sp.pad_id() if sp.pad_id() >= 0 else sp.unk_id()
    special = {"bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "pad": pad}
    special |= {name: sp.piece_to_id(text) for name, text in fim.items()}
    return sp, special, True


__all__ = ["SPM_VOCAB_SIZE", "write_bpe", "write_spm"]
