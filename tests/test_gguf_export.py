"""`slipstream export --from-gguf` / `--from-ollama` on tiny real GGUF files of every architecture we serve
(tests/tiny_gguf.py writes them as llama.cpp's converter does): the export serves them, computes what
transformers' reading of the same file computes, encodes text as the file's own tokenizer does, lays out
fill-in-the-middle with the file's sentinels; the file's blocks are imported as they are (precision gguf);
bad files are refused, naming what is wrong, before anything is written."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from server.engine import Delta, Engine, SamplingParams
from server.models import store
from server.models.export import ExportError
from server.models.export_gguf import export_gguf
from server.verify import verify
from tests.tiny_gguf import FAMILIES, TinyGGUF, write_tiny_gguf

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda _line: None}
TEXTS = ("def add(a, b):\n    return a + b\n", "for i in range(1234):\n\tx = [i, 'héllo']  # 你好\n", "  x  =  1\n\n\n")
# each architecture with the vocabulary kind its real files carry (Llama also as Llama 3's byte-level BPE)
CASES = [
    ("llama", "spm"),
    ("llama", "bpe"),
    ("qwen2", "bpe"),
    ("starcoder2", "bpe"),
    ("gemma", "spm"),
    ("gemma2", "spm"),
    ("gemma3", "spm"),
    ("phi3", "spm"),
]


def _golden(tiny: TinyGGUF, text: str) -> list[int]:
    from tokenizers import Tokenizer

    if isinstance(tiny.tokenizer, Tokenizer):
        return tiny.tokenizer.encode(text, add_special_tokens=False).ids
    return tiny.tokenizer.encode(text)


@pytest.mark.parametrize(("architecture", "vocabulary"), CASES, ids=[f"{a}-{v}" for a, v in CASES])
def test_gguf_exports_serve_and_match_the_file(tmp_path: Path, architecture: str, vocabulary: str) -> None:
    fim = bool(FAMILIES[architecture].fim)
    tiny = write_tiny_gguf(architecture, tmp_path / f"tiny-{architecture}.gguf", tokenizer=vocabulary, weights="Q8_0", fim=fim)
    precision = "gguf" if architecture != "starcoder2" else "int8"  # optimum's graph: see the native test
    manifest = export_gguf(tiny.path, tmp_path / "repo", "m", precision=precision, **QUIET)

    assert manifest.source_sha256 == hashlib.sha256(tiny.path.read_bytes()).hexdigest()
    assert manifest.context_length == 128
    assert manifest.prompt_prefix_ids == ([tiny.special["bos"]] if tiny.add_bos else [])
    assert tiny.special["eos"] in manifest.eos_token_ids
    engine = Engine.load(tmp_path / "repo", "m", threads=1)
    for text in TEXTS:  # the file's own tokenizer's ids (llama.cpp's, for the real files)
        assert engine.prompter.encode(text) == _golden(tiny, text), text
    if fim:  # the sentinels the file names, in prefix-suffix-middle order
        assert manifest.fim is not None
        vocab = engine.prompter.tokenizer
        ids = engine.prompter.prepare("def f(x):\n", 8, suffix="\n    return y\n").ids
        sentinels = [tiny.special[k] for k in ("fim_pre", "fim_suf", "fim_mid")]
        assert [i for i in ids if i in sentinels] == sentinels
        assert vocab.token_to_id(manifest.fim.prefix) == tiny.special["fim_pre"]
        if "fim_sep" in tiny.special:
            assert vocab.token_to_id(manifest.fim.file_sep) == tiny.special["fim_sep"]
    else:
        assert manifest.fim is None

    events = list(engine.generate(engine.prompter.prepare("def f(x):\n    return", 8), SamplingParams(max_tokens=8, temperature=0.0)))
    assert any(isinstance(e, Delta) and e.text for e in events)
    report = verify(tmp_path / "repo", "m")  # against transformers' reading of the same file, in fp32
    assert report.passed, "\n".join(report.lines())


@pytest.mark.parametrize("weights", ["Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "mixed"])
def test_precision_gguf_holds_the_files_blocks(tmp_path: Path, weights: str) -> None:
    tiny = write_tiny_gguf("qwen2", tmp_path / "t.gguf", tokenizer="bpe", weights=weights)
    manifest = export_gguf(tiny.path, tmp_path / "repo", "m", precision="gguf", **QUIET)
    assert manifest.precision == "gguf" and manifest.requantised == []
    graph = onnx.load(str(tmp_path / "repo" / "m" / manifest.onnx_file), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    # every projection and the tied LM head read the file's blocks; the embedding gathers from the same ones
    assert "MatMul" not in ops or all(not any(i.endswith(".weight") for i in n.input) for n in graph.node if n.op_type == "MatMul")
    # per layer: Q, K and V packed into one MatMul by the builder, O, gate, up, down; then the head. A Q4_K_M
    # file's V is Q6_K, Q and K Q4_K: the packed MatMul is then three, side by side (Concat)
    per_layer = 7 if weights == "mixed" else 5
    assert ops.count("MatMulNBits") == 2 * per_layer + 1 and ops.count("GatherBlockQuantized") == 1
    assert sum(n.name.endswith("/gguf/concat") for n in graph.node) == (2 if weights == "mixed" else 0)
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.name == "gguf/token_embd.weight")
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert gather.input[0] == head.input[1]  # one table for both
    report = verify(tmp_path / "repo", "m")
    assert report.passed, "\n".join(report.lines())


def test_not_a_gguf_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all" * 10)
    with pytest.raises(ExportError, match="not a GGUF file"):
        export_gguf(bad, tmp_path / "repo", "m", **QUIET)
    assert not (tmp_path / "repo").exists()


def test_a_store_name_with_a_path_in_it_is_refused(tmp_path: Path) -> None:
    tiny = write_tiny_gguf("qwen2", tmp_path / "t.gguf", tokenizer="bpe", weights="Q8_0")
    for name in ("../outside", "a/b", ".hidden", ""):
        with pytest.raises(ExportError, match="store name"):
            export_gguf(tiny.path, tmp_path / "repo", name or " ", **QUIET)
    assert not (tmp_path / "repo").exists() and not (tmp_path / "outside").exists()


def test_truncated_gguf_is_refused(tmp_path: Path) -> None:
    tiny = write_tiny_gguf("llama", tmp_path / "t.gguf", tokenizer="spm", weights="Q8_0")
    data = tiny.path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ExportError, match="truncated|damaged"):
        export_gguf(cut, tmp_path / "repo", "m", **QUIET)
    assert not (tmp_path / "repo").exists()


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(path, "mamba")
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", __import__("numpy").zeros((8, 32), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ExportError, match="architecture 'mamba' cannot be served"):
        export_gguf(path, tmp_path / "repo", "m", **QUIET)
    assert not (tmp_path / "repo").exists()


def _ollama_store(root: Path, gguf_path: Path, name: str, tag: str) -> str:
    """A store laid out as `ollama pull` leaves it: the GGUF as a blob named by its sha256, a manifest."""
    digest = hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(gguf_path, root / "blobs" / f"sha256-{digest}")
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "layers": [
                    {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 1},
                    {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": gguf_path.stat().st_size},
                ],
            }
        )
    )
    return digest


def _slipstream(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slipstream.cli", *args], capture_output=True, text=True, env={**os.environ, **env}, cwd=ROOT, timeout=600
    )


def test_ollama_store_model_exports_and_is_listed(tmp_path: Path) -> None:
    tiny = write_tiny_gguf("qwen2", tmp_path / "q.gguf", tokenizer="bpe", weights="Q4_0", fim=True)
    digest = _ollama_store(tmp_path / "ollama", tiny.path, "tiny-coder", "1b")
    env = {"OLLAMA_MODELS": str(tmp_path / "ollama")}
    repo = str(tmp_path / "repo")

    missing = _slipstream("export", "--from-ollama", "qwen2.5-coder:7b", "--model-repository", repo, env=env)
    assert missing.returncode == 2
    assert "'qwen2.5-coder:7b' is not pulled" in missing.stderr and "tiny-coder:1b" in missing.stderr
    assert not Path(repo).exists()

    done = _slipstream("export", "--from-ollama", "tiny-coder:1b", "--precision", "gguf", "--model-repository", repo, env=env)
    assert done.returncode == 0, done.stderr
    manifest = store.read_manifest(Path(repo), "tiny-coder-1b")
    assert manifest.source_sha256 == digest and manifest.fim is not None and manifest.precision == "gguf"
    listing = _slipstream("models", "--model-repository", repo, env=env)
    assert "tiny-coder-1b" in listing.stdout and f"sha256 {digest}" in listing.stdout
    assert "ollama:tiny-coder:1b" in listing.stdout


def test_an_interrupted_export_leaves_the_earlier_one_served(tmp_path: Path) -> None:
    tiny = write_tiny_gguf("qwen2", tmp_path / "t.gguf", tokenizer="bpe", weights="Q8_0")
    repo = tmp_path / "repo"
    first = export_gguf(tiny.path, repo, "m", precision="int8", **QUIET)

    def interrupt(line: str) -> None:  # a Ctrl-C while the graph is being built
        if line.startswith("[3/4]"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny.path, repo, "m", precision="gguf", force=True, log=interrupt)
    assert store.check_content(repo, "m") == first  # the int8 export, whole, as it was
    assert not (repo / ".build" / "m").exists()  # the scratch folder went with the interrupted run
    with pytest.raises(KeyboardInterrupt):
        export_gguf(tiny.path, repo, "other", log=interrupt)
    with pytest.raises(store.ModelNotExported):  # a first export interrupted leaves nothing to serve
        store.read_manifest(repo, "other")


def test_cli_refuses_a_bad_file_with_its_reason(tmp_path: Path) -> None:
    bad = tmp_path / "weights.gguf"
    bad.write_text("GGML is not GGUF")
    done = _slipstream("export", "mine", "--from-gguf", str(bad), "--model-repository", str(tmp_path / "repo"), env={})
    assert done.returncode == 2 and "weights.gguf is not a GGUF file" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "repo").exists()


def test_a_block_type_with_no_exact_form_is_requantised_and_named(tmp_path: Path) -> None:
    tiny = write_tiny_gguf("llama", tmp_path / "t.gguf", tokenizer="spm", weights="Q3_K")
    manifest = export_gguf(tiny.path, tmp_path / "repo", "m", precision="gguf", **QUIET)
    # every Q3_K matrix, named in the manifest (the builder packs Q, K and V: all three are named)
    assert {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.1.ffn_down.weight", "output.weight"} <= set(
        manifest.requantised
    )
    report = verify(tmp_path / "repo", "m")
    assert report.passed, "\n".join(report.lines())
    assert "requantised" in next(c.value for c in report.checks if c.name == "blocks exact")
