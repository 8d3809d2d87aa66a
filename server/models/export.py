"""Build model_repository/<name>/ from a bundled GGUF or a local Hugging Face checkpoint.

The graph decides the speed: for the architectures onnxruntime-genai's model builder fuses
(attention, rotary, norms) we export its graph; the rest (CodeGen, GPT-2, ...) go through optimum's
export. Either fp32 graph is then quantised the same way (weight-only MatMulNBits, 8 or 4 bits).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from server.models import catalog, store, triton_config
from server.models.checkpoint_facts import (
    ExportError,
    checkpoint_chat_template,
    context_length,
    count_parameters,
    eos_ids,
    fim_tokens,
    prefix_ids,
    read_json,
)
from server.models.gguf import GGUFSource
from server.models.store import Manifest

Log = Callable[[str], None]

# model_type values (config.json) that onnxruntime-genai 0.11's builder exports as a fused graph.
BUILDER_ARCHITECTURES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "gemma3", "gemma3_text", "granite", "olmo"}
)
PRECISIONS = ("fp32", "int8", "int4", "fp16", "gguf")
# Weights per scale in the 8-bit MatMuls. Measured on both bundled models (same run, this CPU):
# block 128 decodes 15-23% faster than block 32 and costs +0.013 nats/token of teacher-forced NLL
# against the fp32 graph (block 32: +0.006); optimum's per-tensor INT8 costs +1.1 to +1.5.
INT8_BLOCK = 128
# INT4: the transformer's MatMuls at 4 bits, asymmetric, 32 weights per scale; the LM head at 8 bits.
# Measured against the fp32 reference on both bundled models (verify's corpus): the builder's int4
# (symmetric, head at 4 bits) agrees on the top-1 token at 0.70 / 0.68 (SmolLM2 / Gemma); an 8-bit
# head and asymmetric blocks raise that to 0.77 / 0.75 at the same decode speed. HQQ with float zero
# points reaches 0.96 / 0.81 (it recovers the GGUFs' own Q4_1 / Q4_K grids, whose offsets are floats)
# but MatMulNBits then has no fast CPU kernel: 8 tok/s against 160.
INT4_BLOCK = 32


def _require_export_dependencies() -> None:
    import importlib.util

    missing = [m for m in ("torch", "transformers", "onnx", "onnxruntime_genai", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"exporting needs {', '.join(missing)}: install the export extra (pip install torch==2.13.0, "
            "then pip install 'slipstream[export]'), or export on another machine and copy model_repository/"
        )


def store_name(model: str, precision: str) -> str:
    """INT8 is the default precision and takes the plain name; others are suffixed (gemma3-270m-int4)."""
    return model if precision == "int8" else f"{model}-{precision}"


def export_checkpoint(
    hf_dir: Path,
    repository: Path,
    name: str | None = None,
    *,
    precision: str = "int8",
    preset: catalog.Preset | None = None,
    force: bool = False,
    log: Log = print,
) -> Manifest:
    """Export any local Hugging Face causal-LM checkpoint folder; a catalog preset adds what the
    checkpoint does not say (prompt prefix, EOS tokens, fill-in-the-middle sentinels)."""
    hf_dir = hf_dir.resolve()
    if not (hf_dir / "config.json").is_file():
        raise ExportError(f"{hf_dir} is not a Hugging Face checkpoint folder (no config.json)")
    if preset is not None:
        arch = json.loads((hf_dir / "config.json").read_text()).get("model_type")
        if arch != preset.architecture:
            raise ExportError(f"{hf_dir} holds a {arch} model; the preset {preset.name} is {preset.architecture}")
    name = name or (preset.name if preset else hf_dir.name)
    if (existing := existing_export(repository, name, force, log)) is not None:
        return existing
    with workspace(repository, name) as work:
        return export_hf_folder(
            hf_dir,
            repository,
            name,
            work,
            source=str(hf_dir),
            precision=precision,
            step=1,
            log=log,
            prefix_tokens=preset.prompt_prefix if preset and preset.prompt_prefix else None,
            eos_tokens=preset.eos_tokens if preset else None,
            fim=preset.fim if preset else None,
        )


def download_preset(preset: catalog.Preset, log: Log = print) -> Path:
    """The preset's checkpoint from the Hugging Face hub, for a machine that reaches it."""
    from huggingface_hub import snapshot_download

    log(f"downloading {preset.hf_id} from the Hugging Face hub")
    try:
        return Path(snapshot_download(preset.hf_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:  # offline, unknown repo, gated model: all end the same way for the user
        raise ExportError(
            f"cannot download {preset.hf_id} ({type(exc).__name__}: {exc}); "
            f"give a local copy with `slipstream export {preset.name} --from-hf DIR`"
        ) from exc


def existing_export(repository: Path, name: str, force: bool, log: Log) -> Manifest | None:
    """The complete export already in the store, unless asked to build it again: exports are idempotent."""
    if force:
        return None
    try:
        manifest = store.read_manifest(repository, name)
    except store.ModelNotExported:
        return None
    log(f"{name}: already exported in {store.model_dir(repository, name)}")
    triton_config.ensure(repository, manifest)
    return manifest


@contextmanager
def workspace(repository: Path, name: str) -> Iterator[Path]:
    """A scratch folder for the intermediates (GGUF, fp32 checkpoint and graph), removed afterwards."""
    _require_export_dependencies()
    work = repository / ".build" / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_hf_folder(
    hf_dir: Path,
    repository: Path,
    name: str,
    work: Path,
    *,
    source: str,
    step: int,
    log: Log,
    prefix_tokens: tuple[str, ...] | None = None,
    eos_tokens: tuple[str, ...] | None = None,
    chat_template: str | None = None,
    precision: str = "int8",
    fim: catalog.Fim | None = None,
    source_sha256: str = "",
    gguf_file: GGUFSource | None = None,
) -> Manifest:
    from tokenizers import Tokenizer

    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not supported; choose one of {', '.join(PRECISIONS)}")
    if precision == "gguf" and gguf_file is None:
        raise ExportError("precision gguf keeps a GGUF file's own blocks: export from a GGUF (--from-gguf, --from-ollama)")
    config = json.loads((hf_dir / "config.json").read_text())
    arch = config.get("model_type", "")
    fused = arch in BUILDER_ARCHITECTURES
    if not fused and precision == "fp16":
        raise ExportError(f"{arch} goes through optimum, whose fp16 export needs a GPU here; fp32, int8 and int4 work")
    if not (hf_dir / "tokenizer.json").is_file():
        raise ExportError(f"{hf_dir} has no tokenizer.json (a fast tokenizer is required)")
    total = step + 1
    parameters = count_parameters(hf_dir)
    check_memory(parameters)
    # built aside and swapped in at the end: a failed export leaves an earlier one as it was
    staging = work / "out"
    version = staging / store.VERSION_DIR
    version.mkdir(parents=True)

    started = time.perf_counter()
    built = work / "built"
    if fused:
        graph = "genai-builder"
        log(f"[{step}/{total}] {name}: fused ONNX graph ({arch}) with onnxruntime-genai's builder, {precision}")
        _build_fused(hf_dir, built, work, precision)
    else:
        graph = "optimum"
        log(f"[{step}/{total}] {name}: ONNX graph ({arch}) with optimum, {precision}")
        from server.models.optimum_export import export_optimum

        export_optimum(hf_dir, built, log=log)
        for config_file in ("config.json", "generation_config.json"):  # the folder stays loadable by optimum
            if (built / config_file).is_file():
                shutil.copyfile(built / config_file, version / config_file)
    requantised = _finish_graph(built / "model.onnx", version, precision, log, gguf_file)
    log(f"  graph written in {time.perf_counter() - started:.0f} s")

    log(f"[{total}/{total}] {name}: tokenizer and manifest")
    tokenizer_src = hf_dir / "tokenizer.json"
    shutil.copyfile(tokenizer_src, version / "tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_src))
    tok_config = read_json(hf_dir / "tokenizer_config.json")
    manifest = Manifest(
        name=name,
        architecture=arch,
        parameters=parameters,
        precision=precision,
        graph=graph,
        context_length=context_length(config),
        vocab_size=int(config.get("vocab_size") or tokenizer.get_vocab_size()),
        eos_token_ids=eos_ids(config, hf_dir, tokenizer, eos_tokens),
        prompt_prefix_ids=prefix_ids(tokenizer, tok_config, prefix_tokens),
        source=source,
        source_sha256=source_sha256,
        # a file assembled in the scratch folder (the bundled Gemma) is gone after the export: not named
        source_file=str(gguf_file.path) if gguf_file is not None and work.parent not in gguf_file.path.parents else "",
        requantised=requantised,
        chat_template=chat_template or checkpoint_chat_template(hf_dir, tok_config),
        format_version=store.FORMAT_VERSION,
        content_sha256=store.content_hash(version),
        fim=fim_tokens(tokenizer, fim),
    )
    out = store.model_dir(repository, name)
    shutil.rmtree(out, ignore_errors=True)
    shutil.move(str(staging), out)
    triton_config.write(repository, manifest)
    store.write_manifest(repository, manifest)
    log(f"{name}: exported to {out} ({store.size_on_disk(out) / 1e6:.0f} MB)")
    return manifest


def _build_fused(hf_dir: Path, built: Path, work: Path, precision: str) -> None:
    """Run the builder in a child process: it prints a progress line per tensor, which goes to a log
    file we show only when it fails."""
    # fp16 is the CUDA graph (ONNX Runtime's CPU kernels run it too, slowly: enough to verify it here)
    builder_precision, target = ("fp16", "cuda") if precision == "fp16" else ("fp32", "cpu")
    cmd = [
        sys.executable,
        "-m",
        "server.models.builder_main",
        "-i",
        str(hf_dir),
        "-o",
        str(built),
        "-p",
        builder_precision,
        "-e",
        target,
        "-c",
        str(work / "cache"),
    ]
    log_file = work / "builder.log"
    with log_file.open("w") as sink:
        result = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log_file.read_text(errors="replace")[-3000:]
        raise ExportError(f"onnxruntime-genai builder failed (exit {result.returncode}):\n{tail}")


def _finish_graph(source: Path, version: Path, precision: str, log: Log, gguf_file: GGUFSource | None) -> list[str]:
    """Both exporters' fp32 (or fp16) graph into the version folder: quantised the same way whichever
    wrote it (weight-only MatMulNBits: activations are quantised per row, so a row's result does not
    depend on the others in the batch, which continuous batching needs; optimum's own dynamic INT8
    quantises them over the whole batch, and costs +1.1 to +1.5 nats/token), with `logits_to_keep`; gguf:
    the GGUF file's own blocks (gguf_native.py). Returns the GGUF tensors that had to be requantised."""
    requantised: list[str] = []
    if precision in ("fp32", "fp16"):
        for f in source.parent.glob(source.name + "*"):
            shutil.move(str(f), version / f.name)
    elif precision == "gguf" and gguf_file is not None:
        from server.models.gguf_native import write_native_graph

        log(f"  MatMuls and embedding from {gguf_file.path.name}'s own blocks")
        report = write_native_graph(source, gguf_file, version / "model.onnx", log)
        for line in report.lines():
            log(line)
        requantised = report.requantised
    else:
        log(f"  quantising MatMuls to {precision} (MatMulNBits)")
        _quantise_matmuls(source, version / "model.onnx", precision)
    from server.models.last_logits import add_logits_to_keep

    if not add_logits_to_keep(version / "model.onnx"):
        log("  note: the LM head is not a plain MatMul: prefill computes logits for every position")
    return requantised


def _quantise_matmuls(src: Path, dst: Path, precision: str) -> None:
    """int8: every MatMul at 8 bits, symmetric, block INT8_BLOCK. int4: the LM head (the MatMul that
    writes the logits) the same way, every other MatMul at 4 bits, asymmetric, block INT4_BLOCK."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    if precision == "int4":
        from server.models.last_logits import lm_head

        found = lm_head(model.graph)
        head = [found.name] if found is not None else []
        body = MatMulNBitsQuantizer(model, bits=4, block_size=INT4_BLOCK, is_symmetric=False, accuracy_level=4, nodes_to_exclude=head)
        body.process()
        model = body.model.model
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=True)


# Peak memory of an export, in fp32 copies of the weights: the loaded checkpoint, the graph being
# written, and the quantiser's input and output (measured: Gemma-3-270M, 1.07 GB fp32, peaks near 3 GB
# through the builder; optimum's path runs higher).
_EXPORT_PEAK_COPIES = 3


def check_memory(parameters: int, available: int | None = None) -> None:
    """Fail before the work, not an hour into it, when the machine cannot hold the export."""
    import psutil

    needed = parameters * 4 * _EXPORT_PEAK_COPIES
    available = psutil.virtual_memory().available if available is None else available
    if needed > available:
        raise ExportError(
            f"exporting {parameters / 1e9:.2f}B parameters needs about {needed / 2**30:.1f} GiB of memory "
            f"({_EXPORT_PEAK_COPIES} fp32 copies of the weights); {available / 2**30:.1f} GiB is available. "
            "Export on a larger machine and copy model_repository/<name>/ here."
        )


__all__ = [
    "BUILDER_ARCHITECTURES",
    "PRECISIONS",
    "ExportError",
    "Log",
    "check_memory",
    "count_parameters",
    "download_preset",
    "existing_export",
    "export_checkpoint",
    "export_hf_folder",
    "store_name",
    "workspace",
]
