"""tests/tiny_gguf.py writes GGUF files as llama.cpp's converter does: transformers' own GGUF reader loads
them back to the very tensors the tiny model was made of (so the names, shapes, permutations and +1 norms
are the converter's), and gguf's reader finds the tokenizer and fill-in-the-middle fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM
from transformers import logging as transformers_logging
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

from tests.tiny_gguf import ARCHITECTURES, FAMILIES, SPECIAL_KEYS, WEIGHTS, TinyGGUF, write_tiny_gguf
from tests.tiny_model import CHATML

# transformers 4.57 reads every architecture here from GGUF but Gemma 1 (not in its GGUF_CONFIG_MAPPING)
READ_BY_TRANSFORMERS = tuple(a for a in ARCHITECTURES if a != "gemma")
FIM_FAMILIES = tuple(a for a in ARCHITECTURES if FAMILIES[a].fim)
Keys = gguf.Keys.Tokenizer


@pytest.fixture(autouse=True)
def _quiet_transformers() -> None:
    transformers_logging.set_verbosity_error()  # its per-load notes about unused GGUF keys
    transformers_logging.disable_progress_bar()


def _fields(path: Path) -> tuple[gguf.GGUFReader, Any]:
    reader = gguf.GGUFReader(path)

    def value(key: str) -> Any:
        return reader.fields[key].contents() if key in reader.fields else None

    return reader, value


def _load(tiny: TinyGGUF) -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny.path.parent, gguf_file=tiny.path.name).eval()


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("architecture", READ_BY_TRANSFORMERS)
def test_transformers_reads_the_tensors_written(tmp_path: Path, architecture: str, weights: str) -> None:
    """Every tensor transformers loads equals, in Hugging Face layout, what the file holds dequantised:
    the layouts (llama's Q/K permutation, Gemma's norm + 1, phi3's fused matrices, tied output) are right."""
    tokenizer = "spm" if WEIGHTS.index(weights) % 2 else "bpe"
    tiny = write_tiny_gguf(architecture, tmp_path / "tiny.gguf", tokenizer=tokenizer, weights=weights, fim=bool(FAMILIES[architecture].fim))
    model = _load(tiny)
    state = model.state_dict()
    assert set(state) == set(tiny.state_dict)
    for name, expected in tiny.state_dict.items():
        # exact but for Gemma's (w + 1) - 1 in float32
        torch.testing.assert_close(state[name], torch.from_numpy(expected), rtol=0, atol=1e-6, msg=name)
    vocab = model.config.vocab_size
    ids = torch.tensor([[tiny.special["bos"], 5, 42, 300, vocab - 1]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 5, vocab)
    assert torch.isfinite(logits).all()


def test_gemma_1_is_read_once_taught(tmp_path: Path) -> None:
    """transformers 4.57 has no Gemma 1 GGUF reader; server.models.gguf teaches it Gemma 2's (tested here, as
    the import does it, since whether another test taught it already depends on the order tests run in)."""
    from server.models.gguf import _teach_transformers_gemma

    assert [a for a in ARCHITECTURES if a not in GGUF_SUPPORTED_ARCHITECTURES] in ([], ["gemma"])
    _teach_transformers_gemma()
    tiny = write_tiny_gguf("gemma", tmp_path / "tiny.gguf", tokenizer="spm")
    state = _load(tiny).state_dict()
    for name, expected in tiny.state_dict.items():
        torch.testing.assert_close(state[name], torch.from_numpy(expected), rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("tokenizer", ["bpe", "spm"])
@pytest.mark.parametrize("architecture", FIM_FAMILIES)
def test_tokenizer_and_fim_fields(tmp_path: Path, architecture: str, tokenizer: str) -> None:
    family = FAMILIES[architecture]
    tiny = write_tiny_gguf(architecture, tmp_path / "tiny.gguf", tokenizer=tokenizer, fim=True, chat_template=CHATML, context_length=100)
    _, value = _fields(tiny.path)
    assert value("general.architecture") == gguf.MODEL_ARCH_NAMES[family.arch]
    assert value(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=value("general.architecture"))) == 100
    assert value(Keys.CHAT_TEMPLATE) == CHATML
    tokens, types = value(Keys.LIST), value(Keys.TOKEN_TYPE)
    # the vocabulary is the returned tokenizer's, id for id, so its ids are the file's
    tok = tiny.tokenizer
    if isinstance(tok, Tokenizer):
        assert tokens == [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    else:
        assert tokens == [tok.id_to_piece(i) for i in range(tok.get_piece_size())]
    written = {name: value(key) for name, key in SPECIAL_KEYS.items() if value(key) is not None}
    assert written == tiny.special
    for name, text in family.fim.items():
        assert tokens[written[name]] == text
        assert types[written[name]] == gguf.TokenType.CONTROL
    assert set(written) - {"bos", "eos", "unk", "pad"} == set(family.fim)
    assert value(Keys.ADD_BOS) is tiny.add_bos
    if tokenizer == "bpe":
        assert (value(Keys.MODEL), value(Keys.PRE)) == ("gpt2", family.pre)
        assert tiny.add_bos is family.bpe_add_bos
        assert types[tiny.special["eos"]] == gguf.TokenType.CONTROL
        assert len(value(Keys.MERGES)) > 700
        for name, text in family.fim.items():  # whole tokens in text, as llama.cpp parses specials
            assert tok.encode(f"x{text}y").ids[1] == written[name]
    else:
        assert (value(Keys.MODEL), value(Keys.PRE)) == ("llama", "default")
        assert tiny.add_bos is True
        assert value(Keys.ADD_PREFIX) is (not architecture.startswith("gemma"))
        assert len(value(Keys.SCORES)) == len(tokens)
        byte_pieces = [tokens[i] for i, t in enumerate(types) if t == gguf.TokenType.BYTE]
        assert byte_pieces == [f"<0x{b:02X}>" for b in range(256)]
        assert types[tiny.special["unk"]] == gguf.TokenType.UNKNOWN
        gemma_ids = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
        assert {k: written[k] for k in gemma_ids} == (
            gemma_ids if architecture.startswith("gemma") else {"pad": 0, "eos": 2, "bos": 1, "unk": 0}
        )


@pytest.mark.parametrize(
    "pre, digits",
    [("gpt-2", ["Ġ12345"]), ("starcoder", ["1", "2", "3", "4", "5"]), ("qwen2", ["1", "2", "3", "4", "5"]), ("llama-bpe", ["123", "45"])],
)
def test_bpe_splits_as_llama_cpp_does_for_its_pre(tmp_path: Path, pre: str, digits: list[str]) -> None:
    """The golden ids come from a tokenizer that splits digits as llama.cpp does for the file's `pre`."""
    architecture = next(a for a, f in FAMILIES.items() if f.pre == pre)
    tok = write_tiny_gguf(architecture, tmp_path / "tiny.gguf", tokenizer="bpe").tokenizer
    assert isinstance(tok, Tokenizer) and tok.pre_tokenizer is not None
    pieces = [piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str("x = 12345")]
    assert pieces[-len(digits) :] == digits and "".join(pieces) == "xĠ=Ġ12345"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hyperparameters_and_tied_output(tmp_path: Path, architecture: str) -> None:
    family = FAMILIES[architecture]
    tiny = write_tiny_gguf(architecture, tmp_path / "tiny.gguf", tokenizer="spm")
    reader, value = _fields(tiny.path)
    arch = value("general.architecture")

    def key(name: str) -> Any:
        return value(f"{arch}.{name}")

    assert (key("embedding_length"), key("block_count"), key("feed_forward_length")) == (64, 2, 128)
    assert (key("attention.head_count"), key("attention.head_count_kv")) == (4, family.kv_heads)
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) is not family.tied
    assert f"blk.1.{'attn_qkv' if architecture == 'phi3' else 'attn_q'}.weight" in names
    if architecture.startswith("gemma"):  # head_dim 32, not 64 / 4
        assert key("attention.key_length") == key("attention.value_length") == 32
    if architecture in ("gemma2", "gemma3"):
        assert key("attention.sliding_window") == 32
    if architecture == "gemma2":
        assert (key("attn_logit_softcapping"), key("final_logit_softcapping")) == (50.0, 30.0)
    if architecture == "llama":
        assert (key("rope.dimension_count"), key("vocab_size")) == (16, len(value(Keys.LIST)))
        assert key("attention.key_length") == 16
    if architecture == "phi3":
        assert (key("rope.dimension_count"), key("rope.scaling.original_context_length")) == (16, 128)
        assert key("attention.sliding_window") == 0
    if architecture == "starcoder2":
        assert key("attention.layer_norm_epsilon") is not None and "blk.0.ffn_up.bias" in names


@pytest.mark.parametrize("architecture, weights", [(a, w) for a in ("llama", "qwen2", "phi3") for w in WEIGHTS])
def test_weight_types(tmp_path: Path, architecture: str, weights: str) -> None:
    tiny = write_tiny_gguf(architecture, tmp_path / "tiny.gguf", tokenizer="bpe", weights=weights)
    reader, value = _fields(tiny.path)
    types = {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    assert all(t.tensor_type.name == "F32" for t in reader.tensors if len(t.shape) == 1)
    if weights != "mixed":
        assert set(types.values()) == {weights}
    else:  # llama.cpp's Q4_K_M
        q6 = {n for n in types if ".attn_v." in n or ".ffn_down." in n or n == "output.weight"}
        if FAMILIES[architecture].tied:
            q6.add("token_embd.weight")
        q5 = {n for n in types if ".attn_qkv." in n}
        assert {n for n, t in types.items() if t == "Q6_K"} == q6
        assert {n for n, t in types.items() if t == "Q5_K"} == q5
        assert {n for n, t in types.items() if t == "Q4_K"} == set(types) - q6 - q5
        assert value("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    for tensor in reader.tensors:  # every block dequantises to small finite weights
        weights_read = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.isfinite(weights_read).all() and np.abs(weights_read).max() < 2.5


def test_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no fill-in-the-middle"):
        write_tiny_gguf("phi3", tmp_path / "a.gguf", tokenizer="bpe", fim=True)
    with pytest.raises(ValueError, match="weights"):
        write_tiny_gguf("llama", tmp_path / "b.gguf", tokenizer="bpe", weights="IQ2_XS")
