"""Build a tiny, random, but real CodeGen checkpoint for tests.

The test machines cannot reach the Hugging Face hub, so tests cannot download a
pretrained model.  Instead they build a genuine ``CodeGenForCausalLM`` (two layers,
64-dim embeddings, random weights) together with a byte-level BPE tokenizer trained
locally on a few Python standard-library sources.  The result is an ordinary
checkpoint directory that every loader (transformers, optimum, ONNX export) accepts,
and it builds in a few seconds.  Generations are gibberish, but deterministic for a
given seed, which is all the tests need.
"""

from __future__ import annotations

import pathlib
import sysconfig
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    CodeGenConfig,
    CodeGenForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTBigCodeConfig,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Starcoder2Config,
)

EOS = "<|endoftext|>"
VOCAB_SIZE = 1000
# Fixed, sorted list so the training corpus (and thus the vocab) never changes.
# ChatML, as SmolLM2 and Qwen use: the tiny Llama is a chat model, the tiny CodeGen a base model.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_STDLIB_FILES = ("abc.py", "bisect.py", "colorsys.py", "heapq.py", "keyword.py", "textwrap.py")


def _corpus() -> list[str]:
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in _STDLIB_FILES if (stdlib / name).is_file()]
    if not files:  # unusual layout: fall back to the first few modules, sorted
        files = sorted(stdlib.glob("*.py"))[:6]
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    if not texts:
        raise FileNotFoundError(f"no Python sources found under {stdlib}")
    return texts


def _train_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],  # first special token -> id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    assert tok.token_to_id(EOS) == 0
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids
    )


def build_tiny_codegen(out_dir: pathlib.Path, n_positions: int = 256, seed: int = 0) -> pathlib.Path:
    """Write a tiny random CodeGen model + tokenizer to ``out_dir`` and return it."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    config = CodeGenConfig(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_ctx=n_positions,
        n_embd=64,
        n_layer=2,
        n_head=4,
        rotary_dim=8,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = CodeGenForCausalLM(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_llama(out_dir: pathlib.Path, n_positions: int = 256, seed: int = 0) -> pathlib.Path:
    """A tiny random Llama with the same tokenizer: it takes the other export path, onnxruntime-genai's
    fused graph with 8-bit MatMulNBits, which the bundled models use."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=n_positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(out_dir)
    return out_dir


# Tiny configs of the other architectures users bring (GPT-2 / SantaCoder-style, GPT-NeoX / PolyCoder,
# StarCoder2, Qwen2.5-Coder, Gemma-3): hidden 64, two layers. (vocab, context) -> config.
_SPECIAL = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
TINY_CONFIGS: dict[str, Callable[[int, int], PretrainedConfig]] = {
    "gpt2": lambda vocab, ctx: GPT2Config(vocab_size=vocab, n_positions=ctx, n_embd=64, n_layer=2, n_head=4, **_SPECIAL),
    # SantaCoder's architecture: multi-query attention, one key/value head
    "gpt_bigcode": lambda vocab, ctx: GPTBigCodeConfig(
        vocab_size=vocab, n_positions=ctx, n_embd=64, n_layer=2, n_head=4, multi_query=True, **_SPECIAL
    ),
    "gpt_neox": lambda vocab, ctx: GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=ctx,
        rotary_pct=0.25,
        **_SPECIAL,
    ),
    "starcoder2": lambda vocab, ctx: Starcoder2Config(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=ctx,
        **_SPECIAL,
    ),
    "qwen2": lambda vocab, ctx: Qwen2Config(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=ctx,
        tie_word_embeddings=True,
        **_SPECIAL,
    ),
    "gemma3_text": lambda vocab, ctx: Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=ctx,
        sliding_window=32,
        query_pre_attn_scalar=16,
        **_SPECIAL,
    ),
}


def build_tiny(
    architecture: str, out_dir: pathlib.Path, n_positions: int = 128, seed: int = 0, special: tuple[str, ...] = ()
) -> pathlib.Path:
    """A tiny random model of one of TINY_CONFIGS' architectures, with the shared tokenizer (plus
    `special` tokens, e.g. fill-in-the-middle sentinels)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer()
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(special)})
    config = TINY_CONFIGS[architecture](len(tokenizer), n_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
