"""Export a Hugging Face causal LM to ONNX (with KV cache) with optimum: fp32, or dynamically INT8.

The fp32 graph is the store's for the architectures onnxruntime-genai's builder does not fuse
(CodeGen, StarCoder2, ...): export.py quantises it weight-only itself for int8 / int4 (MatMulNBits),
so that a sample's text does not depend on its batch neighbours.

With ``dynamic_int8`` it is the "optimum" benchmark peer (bench/paths.py OptimumPath, timed by bench/decode.py): the stock optimum path
(``main_export`` with ``text-generation-with-past``, then ``ORTQuantizer``), what a user would
otherwise pick. ``AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)`` is used
on purpose: it quantises every MatMul (and the embedding Gather) to INT8, whereas
``onnxruntime.quantization.quantize_dynamic`` with per-channel weights leaves the MatMuls in fp32;
its activations are quantised over the whole batch. Either result loads with
``optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(out_dir)`` and is plain enough for a
hand-written decode loop over ``onnxruntime.InferenceSession``.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

MODEL_FILE = "model.onnx"
# Copied by hand: ORTQuantizer saves config.json and the tokenizer, not this.
_GENERATION_CONFIG = "generation_config.json"
# The INT8 graph is roughly a quarter of the fp32 one; above this fp32 size its
# weights go to an external data file (protobuf caps a single file at 2 GiB).
_EXTERNAL_DATA_ABOVE_FP32_BYTES = 4 << 30


def _onnx_bytes(directory: Path) -> int:
    """Size of the ONNX graph plus any external-data files in ``directory``."""
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file() and p.name.startswith(MODEL_FILE))


# Decoder architectures optimum 2.1 has no ONNX config for, whose inputs and outputs (input_ids,
# attention_mask, position_ids, a key/value cache per layer with num_key_value_heads) are Llama's.
# The config describes the graph's interface only; tracing the model itself writes its computation.
_LLAMA_INTERFACE = frozenset({"starcoder2"})


def _onnx_config_for(hf_dir: Path) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    if config.model_type not in _LLAMA_INTERFACE:
        return {}
    from optimum.exporters.onnx.model_configs import LlamaOnnxConfig

    onnx_config = LlamaOnnxConfig(config, task="text-generation", use_past=True, use_past_in_inputs=True)
    return {"custom_onnx_configs": {"model": onnx_config}}


def export_optimum(hf_dir: Path, out_dir: Path, log: Callable[[str], None] = print, *, dynamic_int8: bool = False) -> None:
    """Export ``hf_dir`` to ONNX (with KV cache) in fp32, or with ``dynamic_int8`` quantised by
    ORTQuantizer, into ``out_dir``.

    ``out_dir`` receives ``model.onnx`` (plus ``model.onnx.data`` for big models),
    ``config.json``, ``generation_config.json`` and the tokenizer files (and ``ort_config.json``
    when quantised). The intermediates live in a temporary directory next to ``out_dir``
    (same filesystem, not /tmp, since they can be several GiB) and are removed.
    """
    # Imported lazily: these pull in torch/transformers/onnxruntime (seconds).
    import torch
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".optimum-export-", dir=out_dir.parent) as tmp:
        fp32_dir = Path(tmp) / "fp32"
        # without dynamic_int8 the fp32 export itself is the result
        result_dir = Path(tmp) / "int8" if dynamic_int8 else fp32_dir

        start = time.perf_counter()
        log(f"[optimum 1/4] exporting {hf_dir} to fp32 ONNX (text-generation-with-past)")
        with warnings.catch_warnings():
            # Tracing the HF model emits TracerWarnings that are benign for this export.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            main_export(
                str(hf_dir),
                output=fp32_dir,
                task="text-generation-with-past",
                library_name="transformers",
                local_files_only=True,
                **_onnx_config_for(hf_dir),
            )
        fp32_bytes = _onnx_bytes(fp32_dir)
        log(f"[optimum 1/4] fp32 export done: {fp32_bytes / 2**20:.1f} MiB in {time.perf_counter() - start:.1f}s")

        start = time.perf_counter()
        external = fp32_bytes > _EXTERNAL_DATA_ABOVE_FP32_BYTES
        if dynamic_int8:
            log(f"[optimum 2/4] quantising dynamically to INT8 (avx512_vnni, per-tensor, external data: {external})")
            qconfig = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)
            quantizer = ORTQuantizer.from_pretrained(fp32_dir, file_name=MODEL_FILE)
            # file_suffix=None keeps the name model.onnx; config.json, ort_config.json and
            # the tokenizer files are written alongside it.
            quantizer.quantize(
                quantization_config=qconfig,
                save_dir=result_dir,
                file_suffix=None,
                use_external_data_format=external,
            )
            del quantizer
            log(f"[optimum 2/4] INT8 model done: {_onnx_bytes(result_dir) / 2**20:.1f} MiB in {time.perf_counter() - start:.1f}s")

        log(f"[optimum 3/4] copying {_GENERATION_CONFIG}")
        for source in (fp32_dir / _GENERATION_CONFIG, hf_dir / _GENERATION_CONFIG):
            if source.is_file() and source != result_dir / _GENERATION_CONFIG:
                shutil.copy2(source, result_dir / _GENERATION_CONFIG)
                break
        else:
            log(f"[optimum 3/4] no {_GENERATION_CONFIG} in {hf_dir}; skipped")

        log(f"[optimum 4/4] moving the model into {out_dir} and removing fp32 intermediates")
        for stale in out_dir.glob(f"{MODEL_FILE}*"):  # e.g. an old model.onnx.data
            stale.unlink()
        for item in sorted(result_dir.iterdir()):
            target = out_dir / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), target)
    log(f"[optimum] done: {out_dir / MODEL_FILE}")
