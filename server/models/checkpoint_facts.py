"""What a Hugging Face checkpoint folder says of itself, read for its manifest without loading a weight:
the parameter count, the context length, end and prefix tokens, FIM tokens, the chat template."""

from __future__ import annotations

import json
from pathlib import Path

from server.models import catalog, store


class ExportError(RuntimeError):
    pass


def count_parameters(hf_dir: Path) -> int:
    """From the safetensors headers, without loading weights (a tied embedding counts once, as stored)."""
    from safetensors import safe_open

    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{hf_dir} has no .safetensors weights (re-save the checkpoint with safe_serialization)")
    total = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                count = 1
                for dim in f.get_slice(key).get_shape():
                    count *= dim
                total += count
    return total


def context_length(config: dict) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    raise ExportError("config.json names no context length (max_position_embeddings / n_positions)")


def eos_ids(config: dict, hf_dir: Path, tokenizer, eos_tokens: tuple[str, ...] | None) -> list[int]:
    if eos_tokens:
        ids = [tokenizer.token_to_id(t) for t in eos_tokens]
        if None in ids:
            raise ExportError(f"EOS tokens {eos_tokens} not all in the vocabulary")
        return ids
    found: list[int] = []
    for source in (read_json(hf_dir / "generation_config.json"), config):
        value = source.get("eos_token_id")
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, int) and v not in found:
                found.append(v)
    if not found:
        raise ExportError("the checkpoint declares no eos_token_id")
    return found


def prefix_ids(tokenizer, tok_config: dict, prefix_tokens: tuple[str, ...] | None) -> list[int]:
    if prefix_tokens is None:
        bos = tok_config.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        prefix_tokens = (bos,) if tok_config.get("add_bos_token") and bos else ()
    ids = [tokenizer.token_to_id(t) for t in prefix_tokens]
    if None in ids:
        raise ExportError(f"prompt prefix tokens {prefix_tokens} not all in the vocabulary")
    return ids


def fim_tokens(tokenizer, fim: catalog.Fim | None) -> store.FimTokens | None:
    if fim is None:
        return None
    missing = [t for t in (fim.prefix, fim.suffix, fim.middle) if tokenizer.token_to_id(t) is None]
    if missing:
        raise ExportError(f"fill-in-the-middle tokens {missing} are not in the tokenizer's vocabulary")
    # the repository tokens only where this tokenizer has them (StarCoder 1 has other ones: text separators then)
    repo_name, file_sep = (t if t and tokenizer.token_to_id(t) is not None else None for t in (fim.repo_name, fim.file_sep))
    return store.FimTokens(
        prefix=fim.prefix, suffix=fim.suffix, middle=fim.middle, repo_name=repo_name if file_sep else None, file_sep=file_sep
    )


def checkpoint_chat_template(hf_dir: Path, tok_config: dict) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: take "default"), or the
    chat_template.jinja file newer checkpoints carry."""
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template.strip():
        return template
    jinja = hf_dir / "chat_template.jinja"
    return jinja.read_text() if jinja.is_file() else None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
