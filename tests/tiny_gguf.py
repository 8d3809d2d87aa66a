"""Tiny, random, but real GGUF files for tests, written as llama.cpp's convert_hf_to_gguf.py writes them.

The test machines cannot download a GGUF, so a GGUF-importing export is tested on files built here: a tiny
Hugging Face model of the architecture (two layers, random seeded weights) is "converted" the way the
converter does it. Its state dict is mapped to GGUF names with gguf's own tensor map, the converter's
transformations are applied (llama's Q/K row permutation for rotary, Gemma's RMSNorm weight + 1, tied
embeddings written once), the metadata keys are the converter's, and the 2-D matrices are stored in the
asked GGML type. The vocabulary is either the byte-level BPE of tests/tiny_model.py ("gpt2" in GGUF) or a
SentencePiece BPE with byte fallback trained on the same corpus ("llama" in GGUF, as Llama 2, CodeLlama,
Gemma and Phi-3 ship). Each file builds in well under a second.

`TinyGGUF.state_dict` is what a correct reader must give back: the Hugging Face names and layouts, holding
the values the file stores once dequantised (so a test can compare a loader's result for every weight type).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gguf
import numpy as np
import sentencepiece as spm
import torch
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    GemmaConfig,
    LlamaConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
    Starcoder2Config,
)

from tests.tiny_gguf_vocab import write_bpe, write_spm

ARCHITECTURES = ("llama", "qwen2", "starcoder2", "gemma", "gemma2", "gemma3", "phi3")
WEIGHTS = ("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "Q3_K", "mixed")
SLIDING_WINDOW = 32
Q = gguf.GGMLQuantizationType
K_QUANTS = (Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K)
# general.file_type as llama.cpp names the result; "mixed" is what llama-quantize Q4_K_M writes
_FILE_TYPE = {
    "F32": gguf.LlamaFileType.ALL_F32,
    "F16": gguf.LlamaFileType.MOSTLY_F16,
    "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
    "Q4_K": gguf.LlamaFileType.MOSTLY_Q4_K_S,
    "Q5_K": gguf.LlamaFileType.MOSTLY_Q5_K_S,
    "Q6_K": gguf.LlamaFileType.MOSTLY_Q6_K,
    "mixed": gguf.LlamaFileType.MOSTLY_Q4_K_M,
    "Q3_K": gguf.LlamaFileType.MOSTLY_Q3_K_M,
}
# GGUF key of each special token this module writes (add_bos_token_id & co. are add_uint32 on these keys;
# the gguf package has no add_* method for the FIM keys, which llama.cpp reads all the same).
SPECIAL_KEYS = {
    "bos": gguf.Keys.Tokenizer.BOS_ID,
    "eos": gguf.Keys.Tokenizer.EOS_ID,
    "unk": gguf.Keys.Tokenizer.UNK_ID,
    "pad": gguf.Keys.Tokenizer.PAD_ID,
    "eot": gguf.Keys.Tokenizer.EOT_ID,
    "fim_pre": gguf.Keys.Tokenizer.FIM_PRE_ID,
    "fim_suf": gguf.Keys.Tokenizer.FIM_SUF_ID,
    "fim_mid": gguf.Keys.Tokenizer.FIM_MID_ID,
    "fim_pad": gguf.Keys.Tokenizer.FIM_PAD_ID,
    "fim_rep": gguf.Keys.Tokenizer.FIM_REP_ID,
    "fim_sep": gguf.Keys.Tokenizer.FIM_SEP_ID,
}


@dataclass(frozen=True)
class _Family:
    arch: gguf.MODEL_ARCH
    tied: bool  # no output.weight: the converter writes a tied lm_head once, as token_embd
    pre: str  # tokenizer.ggml.pre of the byte-level BPE
    bpe_add_bos: bool  # SentencePiece files always add BOS
    fim: dict[str, str]  # special name -> token text, in the order the real vocabulary has them
    kv_heads: int = 2


_CODELLAMA = {"fim_pre": "▁<PRE>", "fim_suf": "▁<SUF>", "fim_mid": "▁<MID>", "eot": "▁<EOT>"}
_CODEGEMMA = {"fim_pre": "<|fim_prefix|>", "fim_mid": "<|fim_middle|>", "fim_suf": "<|fim_suffix|>", "fim_sep": "<|file_separator|>"}
FAMILIES: dict[str, _Family] = {
    # CodeLlama (SentencePiece) or Llama 3 (byte-level BPE): both add BOS, neither ties
    "llama": _Family(gguf.MODEL_ARCH.LLAMA, tied=False, pre="llama-bpe", bpe_add_bos=True, fim=_CODELLAMA),
    # Qwen2.5-Coder 0.5B/1.5B: tied, no BOS
    "qwen2": _Family(
        gguf.MODEL_ARCH.QWEN2,
        tied=True,
        pre="qwen2",
        bpe_add_bos=False,
        fim={
            "fim_pre": "<|fim_prefix|>",
            "fim_mid": "<|fim_middle|>",
            "fim_suf": "<|fim_suffix|>",
            "fim_pad": "<|fim_pad|>",
            "fim_rep": "<|repo_name|>",
            "fim_sep": "<|file_sep|>",
        },
    ),
    "starcoder2": _Family(
        gguf.MODEL_ARCH.STARCODER2,
        tied=True,
        pre="starcoder",
        bpe_add_bos=False,
        fim={
            "fim_pre": "<fim_prefix>",
            "fim_mid": "<fim_middle>",
            "fim_suf": "<fim_suffix>",
            "fim_pad": "<fim_pad>",
            "fim_rep": "<repo_name>",
            "fim_sep": "<file_sep>",
        },
    ),
    # Gemma ties always and adds BOS; CodeGemma's sentinels are in every Gemma vocabulary
    "gemma": _Family(gguf.MODEL_ARCH.GEMMA, tied=True, pre="gpt-2", bpe_add_bos=True, fim=_CODEGEMMA),
    "gemma2": _Family(gguf.MODEL_ARCH.GEMMA2, tied=True, pre="gpt-2", bpe_add_bos=True, fim=_CODEGEMMA),
    "gemma3": _Family(gguf.MODEL_ARCH.GEMMA3, tied=True, pre="gpt-2", bpe_add_bos=True, fim=_CODEGEMMA, kv_heads=1),
    # Phi-3 (SentencePiece) / Phi-4 (byte-level BPE): untied, no fill-in-the-middle tokens
    "phi3": _Family(gguf.MODEL_ARCH.PHI3, tied=False, pre="gpt-2", bpe_add_bos=False, fim={}),
}


@dataclass(frozen=True)
class TinyGGUF:
    path: Path
    architecture: str
    # what the file's vocabulary came from, to compute golden ids: tokenizers.Tokenizer for "bpe",
    # sentencepiece.SentencePieceProcessor for "spm" (FIM tokens included as special/control pieces)
    tokenizer: Tokenizer | spm.SentencePieceProcessor
    special: dict[str, int]  # "bos", "eos", "pad", "unk", "eot", "fim_pre", ... -> the id written
    add_bos: bool
    state_dict: dict[str, np.ndarray]  # HF name -> float32 values in HF layout, as a reader must return


def write_tiny_gguf(
    architecture: str,
    path: Path,
    *,
    tokenizer: Literal["bpe", "spm"],
    weights: str = "F32",
    fim: bool = False,
    chat_template: str | None = None,
    context_length: int = 128,
    seed: int = 0,
) -> TinyGGUF:
    """Write a tiny random `architecture` model to `path` (a .gguf file) and return what was written."""
    family = FAMILIES[architecture]
    if weights not in WEIGHTS:
        raise ValueError(f"weights {weights!r} is not one of {WEIGHTS}")
    if fim and not family.fim:
        raise ValueError(f"{architecture} has no fill-in-the-middle tokens")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[family.arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"tiny-{architecture}")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(_FILE_TYPE[weights])
    fim_tokens = family.fim if fim else {}
    if tokenizer == "bpe":
        tok, special, add_bos = write_bpe(writer, family.pre, family.bpe_add_bos, fim_tokens)
    elif tokenizer == "spm":
        tok, special, add_bos = write_spm(writer, architecture, fim_tokens)
    else:
        raise ValueError(f"tokenizer {tokenizer!r} is neither 'bpe' nor 'spm'")
    for name, index in special.items():
        writer.add_uint32(SPECIAL_KEYS[name], index)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    vocab_size = tok.get_vocab_size() if isinstance(tok, Tokenizer) else tok.get_piece_size()
    # K-quant blocks span 256 values of a row, so every row length (hidden, heads * head_dim,
    # intermediate) must be a multiple of 256 for them; 64 wide is enough for the 32-value blocks.
    big = weights in ("Q4_K", "Q5_K", "Q6_K", "Q3_K", "mixed")
    config = _hf_config(architecture, vocab_size, context_length, special, big)
    _write_hparams(writer, architecture, config)
    state_dict = _write_tensors(writer, architecture, config, weights, np.random.default_rng(seed))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return TinyGGUF(path, architecture, tok, special, add_bos, state_dict)


# --- vocabulary -------------------------------------------------------------------------------------------


# --- hyperparameters --------------------------------------------------------------------------------------


def _hf_config(architecture: str, vocab: int, context: int, special: dict[str, int], big: bool) -> PretrainedConfig:
    """The Hugging Face config the tiny model is 'converted' from: hidden 64 (256 for K-quants), 2 layers,
    4 heads. Gemma's head_dim is not hidden / heads (Gemma 7B: 3072 / 16 heads, head_dim 256); here it is
    twice that, so a reader that ignores key_length fails."""
    family = FAMILIES[architecture]
    hidden, ff = (256, 512) if big else (64, 128)
    head_dim = hidden // 4 * (2 if architecture.startswith("gemma") else 1)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=ff,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=family.kv_heads,
        max_position_embeddings=context,
        tie_word_embeddings=family.tied,
        bos_token_id=special["bos"],
        eos_token_id=special["eos"],
        pad_token_id=special["pad"],
    )
    gemma = dict(head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=SLIDING_WINDOW)
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "starcoder2": lambda: Starcoder2Config(**common),
        "gemma": lambda: GemmaConfig(head_dim=head_dim, **common),
        "gemma2": lambda: Gemma2Config(**gemma, **common),
        "gemma3": lambda: Gemma3TextConfig(**gemma, **common),
        "phi3": lambda: Phi3Config(original_max_position_embeddings=context, **common),
    }
    return configs[architecture]()


def _write_hparams(w: gguf.GGUFWriter, architecture: str, c: Any) -> None:
    """The keys each converter class's set_gguf_parameters writes (TextModel's, then its own)."""
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    if architecture == "starcoder2":
        w.add_layer_norm_eps(c.norm_epsilon)  # LayerNorm with biases, not RMSNorm
    else:
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if architecture not in ("gemma", "gemma2"):  # their classes write no rope base (llama.cpp's default 10000)
        w.add_rope_freq_base(c.rope_theta)
    if architecture == "llama":
        w.add_vocab_size(c.vocab_size)
    if architecture in ("llama", "phi3"):
        w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    if architecture == "phi3":
        w.add_rope_scaling_orig_ctx_len(c.original_max_position_embeddings)
        w.add_sliding_window(c.sliding_window or 0)  # 0 is how the converter writes "none"
    # TextModel writes a config.json's head_dim (Llama's has one) and Gemma's classes always do (it is not
    # hidden / heads there); Phi3's class bypasses TextModel's keys
    if architecture != "phi3" and getattr(c, "head_dim", None) is not None:
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if architecture == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)
    if architecture in ("gemma2", "gemma3"):
        w.add_sliding_window(c.sliding_window)


# --- tensors ----------------------------------------------------------------------------------------------


def _matrix_type(weights: str, name: str, tied: bool) -> gguf.GGMLQuantizationType:
    if weights != "mixed":
        return Q[weights]
    # llama.cpp's llama_tensor_get_type for Q4_K_M: the output matrix (token_embd when tied) Q6_K, attn_v
    # and ffn_down Q6_K on "more bits" layers (with 2 layers, both), a fused attn_qkv Q5_K, the rest Q4_K
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return Q.Q6_K
    if ".attn_v." in name or ".ffn_down." in name:
        return Q.Q6_K
    return Q.Q5_K if ".attn_qkv." in name else Q.Q4_K


def _random_k_blocks(rows: int, cols: int, qtype: gguf.GGMLQuantizationType, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (the gguf package cannot quantise these): random quants and scales, with
    small positive fp16 super-block scales so that every weight dequantises finite and below ~0.5."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(rows * cols // 256, type_size), dtype=np.uint8)
    d = rng.uniform(1e-4, 2e-4, size=(len(blocks), 1)).astype(np.float16)
    if qtype == Q.Q3_K:  # hmask[32] qs[64] scales[12] d: no exact MatMulNBits form (requantised on import)
        blocks[:, 108:110] = d.view(np.uint8)
    elif qtype == Q.Q6_K:  # ql[128] qh[64] int8 scales[16] d: keep the scales within +-32
        blocks[:, 192:208] = rng.integers(-32, 33, size=(len(blocks), 16), dtype=np.int8).view(np.uint8)
        blocks[:, 208:210] = d.view(np.uint8)
    else:  # Q4_K / Q5_K: d dmin scales[12] ...; dmin ~ d * mid-quant keeps the weights about centred
        blocks[:, 0:2] = d.view(np.uint8)
        blocks[:, 2:4] = (d * (8 if qtype == Q.Q4_K else 16)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, -1)


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF's rotate-half rows to GGML's interleaved rotary pairs.
    Row-only, so it applies to quantised rows (whole blocks) as well."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tensors(
    w: gguf.GGUFWriter, architecture: str, config: PretrainedConfig, weights: str, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    family = FAMILIES[architecture]
    gemma = architecture.startswith("gemma")
    with torch.device("meta"):  # names and shapes only
        shapes = {n: tuple(t.shape) for n, t in AutoModelForCausalLM.from_config(config).state_dict().items()}
    names = gguf.get_tensor_name_map(family.arch, config.num_hidden_layers)
    allowed = {
        gguf.TENSOR_NAMES[t].format(bid=b) for t in gguf.MODEL_TENSORS[family.arch] for b in range(config.num_hidden_layers)
    }  # the converter refuses a tensor its arch lacks
    reference: dict[str, np.ndarray] = {}
    for hf_name, shape in shapes.items():
        if hf_name == "lm_head.weight" and family.tied:
            continue  # not in a tied checkpoint's files: the reader ties it to token_embd
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None or name.rsplit(".", 1)[0] not in allowed:
            raise ValueError(f"{architecture}: cannot map {hf_name} to a {family.arch.name} tensor")
        if len(shape) == 2:
            values = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
            qtype = _matrix_type(weights, name, family.tied)
            if qtype in K_QUANTS:
                stored = _random_k_blocks(*shape, qtype, rng)
            else:
                stored = gguf.quants.quantize(values, qtype)
            values = gguf.quants.dequantize(stored, qtype).reshape(shape)  # what a reader gets back
        elif hf_name.endswith("norm.weight"):
            # Gemma's RMSNorm scales by (1 + weight), which it stores; the converter writes weight + 1
            values = (0.0 if gemma else 1.0) + rng.normal(0.0, 0.1, size=shape).astype(np.float32)
            qtype, stored = Q.F32, values + 1.0 if gemma else values
        else:  # biases, 1-D: the converter keeps them F32
            values = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
            qtype, stored = Q.F32, values
        if architecture == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            stored = _permute(stored, heads)
        stored = stored.astype(np.float32) if qtype == Q.F32 else stored
        w.add_tensor(name, stored, raw_dtype=qtype if stored.dtype == np.uint8 else None)
        reference[hf_name] = values.astype(np.float32)
    if family.tied:
        reference["lm_head.weight"] = reference["model.embed_tokens.weight"]
    return reference
