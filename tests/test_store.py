"""The model store: manifests, idempotent exports, clear errors, the CLI's export and models."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.models import store
from server.models.export import ExportError, export_checkpoint
from tests.conftest import ROOT, TINY, TINY_CONTEXT, TINY_LLAMA


def slipstream(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slipstream.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_manifest_of_the_optimum_export(tiny_repo: Path, tiny_checkpoint: Path) -> None:
    from transformers import AutoModelForCausalLM

    manifest = store.read_manifest(tiny_repo, TINY)
    reference = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    assert manifest.architecture == "codegen" and manifest.graph == "optimum" and manifest.precision == "int8"
    assert manifest.parameters == sum(p.numel() for p in reference.parameters())
    assert manifest.context_length == TINY_CONTEXT and manifest.eos_token_ids == [0] and manifest.prompt_prefix_ids == []
    assert (tiny_repo / TINY / manifest.onnx_file).is_file() and (tiny_repo / TINY / manifest.tokenizer_file).is_file()


def test_fused_export_of_a_llama_checkpoint(tiny_llama_repo: Path) -> None:
    manifest = store.read_manifest(tiny_llama_repo, TINY_LLAMA)
    assert (manifest.architecture, manifest.graph, manifest.precision) == ("llama", "genai-builder", "int8")
    import onnx

    graph = onnx.load(str(tiny_llama_repo / TINY_LLAMA / manifest.onnx_file), load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert "MatMulNBits" in ops and "GroupQueryAttention" in ops and "MatMul" not in ops


def test_export_is_idempotent_and_rebuilds_an_incomplete_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    export_checkpoint(tiny_checkpoint, tmp_path, "m", log=lines.append)
    onnx_file = tmp_path / "m" / "1" / "model.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    lines.clear()
    export_checkpoint(tiny_checkpoint, tmp_path, "m", log=lines.append)
    assert onnx_file.stat().st_mtime_ns == stamp and any("already exported" in line for line in lines)

    onnx_file.unlink()  # an interrupted export
    with pytest.raises(store.ModelNotExported, match="incomplete"):
        store.read_manifest(tmp_path, "m")
    export_checkpoint(tiny_checkpoint, tmp_path, "m", log=lines.append)
    assert store.read_manifest(tmp_path, "m").name == "m"
    assert not (tmp_path / ".build" / "m").exists()  # intermediates are cleaned up


def test_export_errors_are_clear(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no config.json"):
        export_checkpoint(tmp_path / "nowhere", tmp_path)
    with pytest.raises(ExportError, match="fp16"):
        export_checkpoint(tiny_checkpoint, tmp_path, "q", precision="fp16")  # CodeGen goes through optimum
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_checkpoint, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_checkpoint(no_tokenizer, tmp_path / "repo")


def test_cli_export_and_models(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = slipstream("export", "--from-hf", str(tiny_checkpoint), "--name", "cli-tiny", "--model-repository", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "[1/2]" in result.stdout and "exported to" in result.stdout
    listed = slipstream("models", "--model-repository", str(tmp_path))
    assert listed.returncode == 0 and "cli-tiny" in listed.stdout and "codegen" in listed.stdout
    assert "gemma3-270m" in listed.stdout  # what the catalog can build

    for args, message in [
        ((), "name a bundled model"),
        (("no-such-model",), "unknown model"),
        (("--from-hf", str(tmp_path / "missing")), "no config.json"),
    ]:
        bad = slipstream("export", *args, "--model-repository", str(tmp_path))
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr


def test_serve_refuses_a_model_that_is_not_exported(tmp_path: Path) -> None:
    result = slipstream("serve", "--model", "nothing-here", "--model-repository", str(tmp_path), "--port", "1")
    assert result.returncode != 0 and "no exported model" in result.stderr and "slipstream export" in result.stderr


def test_a_failed_forced_export_keeps_the_earlier_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    export_checkpoint(tiny_checkpoint, tmp_path / "repo", "m", log=lambda _line: None)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(Exception):  # noqa: B017 - whatever the exporter raises on garbage weights
        export_checkpoint(broken, tmp_path / "repo", "m", force=True, log=lambda _line: None)
    assert store.read_manifest(tmp_path / "repo", "m").source == str(tiny_checkpoint.resolve())


@pytest.mark.parametrize(
    ("checkpoint", "precision", "ops"),
    [
        ("tiny_llama_checkpoint", "int4", {"MatMulNBits", "GroupQueryAttention"}),
        ("tiny_llama_checkpoint", "fp32", {"MatMul", "GroupQueryAttention"}),
        ("tiny_llama_checkpoint", "fp16", {"MatMul", "GroupQueryAttention"}),
        ("tiny_checkpoint", "fp32", {"MatMul"}),
        ("tiny_checkpoint", "int4", {"MatMulNBits"}),
    ],
)
def test_other_precisions_export_and_generate(request, tmp_path: Path, checkpoint: str, precision: str, ops: set[str]) -> None:
    import onnx

    from server.engine import Delta, Engine, SamplingParams

    manifest = export_checkpoint(request.getfixturevalue(checkpoint), tmp_path, "m", precision=precision, log=lambda _l: None)
    assert manifest.precision == precision and len(manifest.content_sha256) == 64
    graph = onnx.load(str(tmp_path / "m" / manifest.onnx_file), load_external_data=False).graph
    assert ops <= {node.op_type for node in graph.node}
    if precision == "int4":  # the body at 4 bits, the LM head (it writes the logits) at 8
        bits = {node.name: next(a.i for a in node.attribute if a.name == "bits") for node in graph.node if node.op_type == "MatMulNBits"}
        from server.models.last_logits import lm_head

        head = lm_head(graph).name
        assert bits.pop(head) == 8 and set(bits.values()) == {4}
    if precision == "fp16":  # the CUDA graph's weights and cache; ONNX Runtime's CPU kernels run it here
        assert {init.data_type for init in graph.initializer if init.name.endswith("MatMul.weight")} == {onnx.TensorProto.FLOAT16}
    engine = Engine.load(tmp_path, "m", threads=1)
    text = "".join(
        e.text
        for e in engine.generate(
            engine.prompter.prepare("def f(x):", 8), SamplingParams(max_tokens=8, temperature=0, logit_bias={0: -100.0})
        )
        if isinstance(e, Delta)
    )
    assert text


def test_content_hash_is_of_the_files(tiny_repo: Path) -> None:
    manifest = store.read_manifest(tiny_repo, TINY)
    assert manifest.content_sha256 == store.content_hash(tiny_repo / TINY / store.VERSION_DIR)


def test_a_file_changed_since_the_export_is_caught(tiny_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_repo / TINY, tmp_path / TINY)
    assert store.check_content(tmp_path, TINY).name == TINY  # untouched: passes
    with (tmp_path / TINY / store.VERSION_DIR / "tokenizer.json").open("a") as f:
        f.write(" ")  # one byte more, still valid JSON: only the hash can tell
    with pytest.raises(store.ContentChanged, match=f"files of '{TINY}' changed since it was exported.*export it again"):
        store.check_content(tmp_path, TINY)
    result = slipstream("models", "verify", TINY, "--model-repository", str(tmp_path))
    assert result.returncode == 1 and "FAIL files" in result.stdout and "changed since it was exported" in result.stdout, (
        result.stdout + result.stderr
    )


def test_a_model_too_big_for_memory_fails_before_any_work() -> None:
    from server.models.export import check_memory

    check_memory(135_000_000, available=4 * 2**30)
    with pytest.raises(ExportError, match=r"16\.00B parameters needs about 178\.8 GiB.*4\.0 GiB is available"):
        check_memory(16_000_000_000, available=4 * 2**30)  # CodeGen-16B on a 4 GiB machine


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "int4"])
def test_verify_against_the_source_checkpoint(tiny_llama_checkpoint: Path, tmp_path: Path, precision: str) -> None:
    from server.verify import verify

    export_checkpoint(tiny_llama_checkpoint, tmp_path, "m", precision=precision, log=lambda _l: None)
    report = verify(tmp_path, "m")
    assert report.passed, "\n".join(report.lines())
    assert {c.name for c in report.checks} >= {"NLL nats/token", "top-1 agreement"}


def test_verify_optimum_fp32_and_int8(tiny_checkpoint: Path, tiny_repo: Path, tmp_path: Path) -> None:
    from server.verify import verify

    export_checkpoint(tiny_checkpoint, tmp_path, "m", precision="fp32", log=lambda _l: None)
    for repository, name in ((tmp_path, "m"), (tiny_repo, TINY)):
        report = verify(repository, name)
        assert report.passed, "\n".join(report.lines())


def test_verify_catches_a_model_that_is_not_its_source(tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    """The same architecture and tokenizer, other weights: the check must fail."""
    from tests.tiny_model import build_tiny_llama

    other = build_tiny_llama(tmp_path / "other", n_positions=TINY_CONTEXT, seed=1)
    export_checkpoint(tiny_llama_checkpoint, tmp_path / "repo", "m", precision="fp32", log=lambda _l: None)
    result = slipstream("models", "verify", "m", "--reference", str(other), "--model-repository", str(tmp_path / "repo"))
    assert result.returncode == 1 and "FAILS" in result.stdout, result.stdout + result.stderr
    assert "FAIL max |delta log p|" in result.stdout


def test_a_preset_adds_what_the_checkpoint_does_not_say(tmp_path: Path) -> None:
    from server.models.catalog import PRESETS
    from tests.tiny_model import build_tiny

    fim = PRESETS["starcoder2-3b"].fim
    checkpoint = build_tiny("starcoder2", tmp_path / "sc2", special=(fim.prefix, fim.suffix, fim.middle))
    result = slipstream("export", "starcoder2-3b", "--from-hf", str(checkpoint), "--model-repository", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    manifest = store.read_manifest(tmp_path / "repo", "starcoder2-3b")
    assert manifest.architecture == "starcoder2" and manifest.eos_token_ids == [0]
    assert (manifest.fim.prefix, manifest.fim.suffix, manifest.fim.middle) == ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")
    listed = slipstream("models", "--model-repository", str(tmp_path / "repo"))
    assert "codegen-350m-mono" in listed.stdout and "Salesforce/codegen-350M-mono" in listed.stdout


def test_preset_errors_are_clear(tiny_checkpoint: Path, tiny_llama_checkpoint: Path, tmp_path: Path) -> None:
    import os

    wrong = slipstream("export", "codegen-350m-mono", "--from-hf", str(tiny_llama_checkpoint), "--model-repository", str(tmp_path))
    assert wrong.returncode == 2 and "holds a llama model" in wrong.stderr and "codegen" in wrong.stderr
    other = slipstream("export", "starcoder2-3b", "--from-hf", str(tiny_checkpoint), "--model-repository", str(tmp_path))
    assert other.returncode == 2 and "holds a codegen model" in other.stderr
    # no hub here: offline mode makes the attempt fail at once, without traffic
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    offline = subprocess.run(
        [sys.executable, "-m", "slipstream.cli", "export", "codegen-350m-mono", "--model-repository", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert offline.returncode == 2 and "--from-hf DIR" in offline.stderr and "Traceback" not in offline.stderr


def test_fim_tokens_must_be_in_the_vocabulary(tmp_path: Path) -> None:
    from server.models.catalog import PRESETS
    from tests.tiny_model import build_tiny

    checkpoint = build_tiny("qwen2", tmp_path / "qwen")  # no <|fim_prefix|> in this tokenizer
    with pytest.raises(ExportError, match="fill-in-the-middle tokens"):
        export_checkpoint(checkpoint, tmp_path / "repo", preset=PRESETS["qwen2.5-coder-0.5b"], log=lambda _l: None)
    assert not (tmp_path / "repo" / "qwen2.5-coder-0.5b").exists()


def test_every_export_writes_a_triton_config_that_parses_as_tritons_model_config(tiny_repo: Path, tiny_llama_repo: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    for repository, name in ((tiny_repo, TINY), (tiny_llama_repo, TINY_LLAMA)):
        text = (repository / name / "config.pbtxt").read_text()
        config = text_format.Parse(text, model_config_pb2.ModelConfig())  # Triton's own schema: unknown fields fail
        assert config.name == name and config.backend == "python" and config.model_transaction_policy.decoupled
        assert [i.name for i in config.input] == ["prompt", "sampling_parameters"]
        assert [o.name for o in config.output] == ["event"]
        assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        assert parameters["precision"] == "int8" and (repository / name / parameters["onnx_file"]).is_file()


def test_an_optimum_export_from_before_weight_only_quantisation_is_rebuilt(tiny_repo: Path, tmp_path: Path) -> None:
    import json
    import shutil

    shutil.copytree(tiny_repo / TINY, tmp_path / TINY)
    manifest = json.loads((tmp_path / TINY / "manifest.json").read_text())
    (tmp_path / TINY / "manifest.json").write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(store.ModelNotExported, match="older slipstream.*export it again"):
        store.read_manifest(tmp_path, TINY)


def test_content_hash_leaves_out_bytecode_caches(tiny_repo: Path, tmp_path: Path) -> None:
    """Triton's python backend imports model.py from the export; a __pycache__ it writes is no change to the model."""
    copy = tmp_path / "v"
    shutil.copytree(tiny_repo / TINY / store.VERSION_DIR, copy)
    before = store.content_hash(copy)
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00" * 16)
    assert store.content_hash(copy) == before
    (copy / "tokenizer.json").write_text("{}")
    assert store.content_hash(copy) != before
