"""Shared fixtures: a tiny real CodeGen exported through the real store, and real server processes
on 127.0.0.1 that tests talk to over HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.models import store
from server.models.catalog import PRESETS
from server.models.export import export_checkpoint
from server.models.export_gguf import export_bundled
from testkit.server_process import ServerProcess, free_port  # noqa: F401 - the tests' import path
from tests.tiny_model import build_tiny, build_tiny_codegen, build_tiny_llama

ROOT = Path(__file__).resolve().parent.parent
TINY = "tiny-codegen"
TINY_LLAMA = "tiny-llama"
TINY_CONTEXT = 128  # small, so that trimming is easy to reach
LONG_CONTEXT = 1024
FIM_MODEL = "starcoder2-3b"  # the preset (sentinels, repository tokens) a tiny StarCoder2 is exported under


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_codegen(tmp_path_factory.mktemp("hf") / TINY, n_positions=TINY_CONTEXT)


@pytest.fixture(scope="session")
def tiny_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("model_repository")
    export_checkpoint(tiny_checkpoint, repository, TINY, log=lambda _line: None)
    return repository


@pytest.fixture(scope="session")
def tiny_fp32_repo(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CodeGen in fp32: optimum's INT8 graph quantises activations over the whole input, so a
    row's logits there move (by ~1e-2) with the batch and with a several-token step."""
    repository = tmp_path_factory.mktemp("fp32")
    export_checkpoint(tiny_checkpoint, repository, TINY, precision="fp32", log=lambda _line: None)
    return repository


@pytest.fixture(scope="session")
def tiny_llama_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The other export path: onnxruntime-genai's fused graph, as the bundled models use."""
    return _llama_repo(tmp_path_factory, TINY_CONTEXT)


@pytest.fixture(scope="session")
def long_llama_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a context of LONG_CONTEXT: streams long enough to look at (or kill a replica) mid-way."""
    return _llama_repo(tmp_path_factory, LONG_CONTEXT)


def _llama_repo(tmp_path_factory: pytest.TempPathFactory, context: int) -> Path:
    checkpoint = build_tiny_llama(tmp_path_factory.mktemp("hf") / TINY_LLAMA, n_positions=context)
    repository = tmp_path_factory.mktemp("model_repository")
    export_checkpoint(checkpoint, repository, TINY_LLAMA, log=lambda _line: None)
    return repository


@pytest.fixture(scope="session")
def tiny_llama_checkpoint(tiny_llama_repo: Path) -> Path:
    return Path(store.read_manifest(tiny_llama_repo, TINY_LLAMA).source)


@pytest.fixture(scope="session")
def duo_repo(tiny_repo: Path, tiny_llama_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store holding both tiny models."""
    return one_store(tmp_path_factory.mktemp("duo_repository"), (tiny_llama_repo, TINY_LLAMA), (tiny_repo, TINY))


def one_store(repository: Path, *models: tuple[Path, str]) -> Path:
    """Models of several stores (each a (repository, name)) copied into the one at `repository`."""
    for source, name in models:
        shutil.copytree(source / name, repository / name)
    return repository


@pytest.fixture(scope="session")
def duo_server(duo_repo: Path) -> Iterator[ServerProcess]:
    """The tiny Llama (chat template) and the tiny CodeGen (none) in one server, the Llama first."""
    with ServerProcess(duo_repo, [TINY_LLAMA, TINY]) as server:
        yield server


@pytest.fixture(scope="session")
def fim_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny StarCoder2 exported with its FIM sentinels and its repository and file-separator tokens."""
    fim = PRESETS[FIM_MODEL].fim
    assert fim is not None
    root = tmp_path_factory.mktemp("fim")
    special = tuple(t for t in (fim.prefix, fim.suffix, fim.middle, fim.repo_name, fim.file_sep) if t)
    checkpoint = build_tiny("starcoder2", root / "hf", special=special)
    export_checkpoint(checkpoint, root / "repo", FIM_MODEL, preset=PRESETS[FIM_MODEL], log=lambda _line: None)
    return root / "repo"


@pytest.fixture(scope="session")
def bundled_repo() -> Path:
    """The checkout's own model_repository: the bundled models are exported once and then reused,
    by the tests and by `make serve` alike."""
    repository = ROOT / "model_repository"
    for name in ("gemma3-270m", "smollm2-135m"):
        export_bundled(name, repository)
    return repository


@pytest.fixture(scope="session")
def tiny_server(tiny_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tiny_repo, [TINY]) as server:
        yield server


@pytest.fixture(scope="session")
def bundled_server(bundled_repo: Path) -> Iterator[ServerProcess]:
    with ServerProcess(bundled_repo, ["gemma3-270m", "smollm2-135m"]) as server:
        yield server
