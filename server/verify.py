"""Does an exported model compute what the original computes? (`slipstream models verify NAME`)

First, are its files the ones exported (store.check_content)? Then the numbers. Beside the store and
the engine, not in either: it reads the one and runs the other.

The reference is the source checkpoint run by transformers in fp32: the --from-hf folder the manifest
names, or for a bundled model the checkpoint rebuilt from its GGUF. Both read the same token ids of a
fixed stretch of real code; we compare, position by position:
- log-probabilities: an fp32 export must match to within FP32_TOLERANCE wherever the reference gives
  a token a real chance (log p >= FP32_FLOOR);
- teacher-forced mean NLL: a quantised export may lose at most NLL_TOLERANCE[precision] nats/token;
- top-1 agreement (how often both pick the same next token): reported, and held to AGREEMENT for
  models whose reference is decided at most positions (a random test model's near-flat
  distributions make the top token a coin toss under any rounding, so agreement says nothing there).
For the bundled models the tokenizer is also checked against llama.cpp's ids on the same GGUF.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from server.engine import Runner, log_softmax
from server.models import catalog, store

FP32_TOLERANCE = 5e-3  # max |log p_export - log p_reference| over the tokens that matter:
# those the reference gives at least e^FP32_FLOOR (4.5e-5). Far-tail log-probs (e^-30) carry float
# noise of their own: Gemma-3's fp32 graph is off by 5.3e-3 at worst there, with NLL and top-1 equal.
FP32_FLOOR = -10.0
NLL_TOLERANCE = {"fp32": 1e-3, "fp16": 0.01, "int8": 0.05, "int4": 0.35, "gguf": 0.05}
# Measured on the bundled models (SmolLM2 / Gemma-3): int8 agrees at 0.935 / 0.958 (NLL +0.018 /
# -0.007); int4 at 0.77 / 0.75 (NLL +0.19 / +0.24). Their references are the GGUFs' weights (Q4_1 /
# Q4_K_M) dequantised: 4-bit grids with a float offset per block, which MatMulNBits' integer zero
# points cannot hold, so int4 rounds weights that were rounded once already, onto another grid.
AGREEMENT = {"fp32": 0.99, "fp16": 0.97, "int8": 0.90, "int4": 0.70, "gguf": 0.90}
# A reference "decided" where its top token beats the runner-up by this many nats.
_DECIDED_MARGIN = 0.5
_DECIDED_SHARE = 0.5
_TOKENS = 384
GOLDEN = Path(__file__).parent / "models" / "golden_token_ids.json"


@dataclass
class Check:
    name: str
    value: str
    passed: bool


@dataclass
class Report:
    model: str
    precision: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def lines(self) -> list[str]:
        width = max(len(c.name) for c in self.checks)
        rows = [f"  {'ok ' if c.passed else 'FAIL'} {c.name:<{width}}  {c.value}" for c in self.checks]
        verdict = "passes" if self.passed else "FAILS"
        return [f"{self.model} ({self.precision}) {verdict}:", *rows]


def corpus_ids(tokenizer, prefix: list[int], tokens: int = _TOKENS) -> list[int]:
    """The fixed stretch of real code both sides score: the standard library's textwrap.py."""
    source = Path(textwrap.__file__).read_text()
    return prefix + tokenizer.encode(source, add_special_tokens=False).ids[:tokens]


def mean_nll(logprobs: np.ndarray, ids: list[int]) -> float:
    # logprobs: [T, V] for positions 0..T-1; token t+1 is scored by position t
    return float(-logprobs[np.arange(len(ids) - 1), ids[1:]].mean())


def verify(repository: Path, name: str, reference: Path | None = None, threads: int = 2) -> Report:
    from tokenizers import Tokenizer

    manifest = store.read_manifest(repository, name)
    report = Report(name, manifest.precision)
    try:
        store.check_content(repository, name)
    except store.ContentChanged as changed:  # the numbers of other files would say nothing of this export
        report.checks.append(Check("files", str(changed), False))
        return report
    report.checks.append(Check("files", "as exported (the manifest's content_sha256)", True))
    folder = store.model_dir(repository, name)
    tokenizer = Tokenizer.from_file(str(folder / manifest.tokenizer_file))
    bundled = next((e for e in catalog.CATALOG.values() if manifest.source.startswith(e.package + ":")), None)
    if bundled is not None:
        report.checks.append(_tokenizer_check(tokenizer, bundled.name))

    ids = corpus_ids(tokenizer, manifest.prompt_prefix_ids)[: manifest.context_length]
    exported = log_softmax(Runner(folder / manifest.onnx_file, threads).prefill(ids, all_logits=True)[0])
    with tempfile.TemporaryDirectory() as tmp:
        gguf = _source_gguf(manifest, bundled, reference, Path(tmp))
        if gguf is not None:  # a GGUF source: its weights dequantised by transformers
            from server.models.gguf import import_gguf

            ref_dir = import_gguf(gguf, Path(tmp) / "hf", log=lambda _line: None)
        else:
            ref_dir = reference or _reference_dir(manifest)
        expected = log_softmax(_reference_logits(ref_dir, ids))
        try:
            llama = _llama_cpp_logprobs(gguf, ids, threads) if gguf is not None else None
        except ValueError as exc:  # llama-cpp-python's word for a file llama.cpp cannot load
            report.checks.append(Check("vs llama.cpp", f"not compared: llama.cpp does not load the file ({exc})", True))
            llama = None
        if manifest.precision == "gguf":
            report.checks.append(_blocks_exact(folder / manifest.onnx_file, expected, ids, threads, manifest.requantised))
    report.checks.extend(compare(exported, expected, ids, manifest.precision))
    if llama is not None:  # llama.cpp on the same file: how far the export is from what its users run
        agree = float((exported[:-1].argmax(-1) == llama[:-1].argmax(-1)).mean())
        delta = mean_nll(exported, ids) - mean_nll(llama, ids)
        allowed = NLL_TOLERANCE[manifest.precision]
        report.checks.append(
            Check(
                "vs llama.cpp",
                f"NLL delta {delta:+.4f} (allowed {allowed}), top-1 agreement {agree:.4f}, on the same GGUF",
                abs(delta) <= max(allowed, 0.05),
            )
        )
    return report


def compare(exported: np.ndarray, expected: np.ndarray, ids: list[int], precision: str) -> list[Check]:
    # exported, expected: [T, V] log-probabilities; token t+1 is scored at position t
    if exported.shape != expected.shape:
        return [Check("shapes", f"{exported.shape} vs reference {expected.shape}", False)]
    nll_export, nll_ref = mean_nll(exported, ids), mean_nll(expected, ids)
    top2 = np.sort(expected, axis=-1)[:, -2:]
    decided = (top2[:, 1] - top2[:, 0]) >= _DECIDED_MARGIN
    agreement = float((exported.argmax(-1) == expected.argmax(-1)).mean())
    checks = [
        Check(
            "NLL nats/token",
            f"{nll_export:.4f} vs reference {nll_ref:.4f} (delta {nll_export - nll_ref:+.4f}, allowed {NLL_TOLERANCE[precision]})",
            abs(nll_export - nll_ref) <= NLL_TOLERANCE[precision],
        ),
    ]
    if decided.mean() >= _DECIDED_SHARE:
        checks.append(Check("top-1 agreement", f"{agreement:.4f} (at least {AGREEMENT[precision]})", agreement >= AGREEMENT[precision]))
    else:
        checks.append(
            Check(
                "top-1 agreement", f"{agreement:.4f} (reported only: the reference is decided at {decided.mean():.0%} of positions)", True
            )
        )
    if precision == "fp32":
        worst = float(np.abs(exported - expected)[expected >= FP32_FLOOR].max())
        checks.append(
            Check("max |delta log p|", f"{worst:.2e} where log p >= {FP32_FLOOR:g} (at most {FP32_TOLERANCE:.0e})", worst <= FP32_TOLERANCE)
        )
    return checks


def _tokenizer_check(tokenizer, model: str) -> Check:
    cases = json.loads(GOLDEN.read_text())["models"][model]
    wrong = [c["text"] for c in cases if tokenizer.encode(c["text"], add_special_tokens=False).ids != c["ids"]]
    value = f"{len(cases) - len(wrong)}/{len(cases)} texts encode to llama.cpp's ids"
    return Check("tokenizer", value + (f"; differs on {wrong[0]!r}" if wrong else ""), not wrong)


def _blocks_exact(onnx_file: Path, expected: np.ndarray, ids: list[int], threads: int, requantised: list[str]) -> Check:
    """A gguf export's blocks hold the file's weights exactly: with the activations kept in fp32
    (MatMulNBits' accuracy_level 0; the served graph's 4 quantises them to int8, as llama.cpp does), its
    log-probabilities are the fp32 reference's, to fp32 rounding."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    for node in model.graph.node:
        for attribute in node.attribute:
            if node.op_type == "MatMulNBits" and attribute.name == "accuracy_level":
                attribute.i = 0
    # ONNX Runtime reads external data only from the graph's own folder, and follows no link out of it:
    # the copy sits in the repository's scratch folder, its weights hard-linked (copied across devices)
    scratch = onnx_file.parents[2] / ".build"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        copy = Path(tmp) / onnx_file.name
        onnx.save(model, str(copy))
        for data in onnx_file.parent.glob(onnx_file.name + ".data"):
            try:
                os.link(data, copy.parent / data.name)
            except OSError:
                shutil.copyfile(data, copy.parent / data.name)
        exact = log_softmax(Runner(copy, threads).prefill(ids, all_logits=True)[0])
    worst = float(np.abs(exact - expected)[expected >= FP32_FLOOR].max())
    if requantised:  # those tensors were rounded again: the rest is exact, the whole cannot be
        return Check(
            "blocks exact",
            f"max |delta log p| {worst:.2e} with fp32 activations; reported only: "
            f"{len(requantised)} tensors of a type with no exact form were requantised to 8 bits",
            True,
        )
    return Check(
        "blocks exact", f"max |delta log p| {worst:.2e} with fp32 activations (at most {FP32_TOLERANCE:.0e})", worst <= FP32_TOLERANCE
    )


def _source_gguf(manifest: store.Manifest, bundled: catalog.CatalogEntry | None, reference: Path | None, tmp: Path) -> Path | None:
    """The GGUF file the export came from, where it did and is here: --reference FILE, the bundled
    model's package, or the manifest's source file (checked to be the same bytes)."""
    if reference is not None:
        return reference if reference.is_file() else None
    if bundled is not None:
        return bundled.locate_gguf(tmp)
    if not manifest.source_file:
        return None
    from server.models.gguf import file_sha256

    gguf_path = Path(manifest.source_file)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"the source GGUF {gguf_path} is not here: give it with --reference FILE")
    if file_sha256(gguf_path) != manifest.source_sha256:
        raise FileNotFoundError(
            f"{gguf_path} is not the file {manifest.name} was exported from (its sha256 "
            f"differs from {manifest.source_sha256[:12]}...): give that one with --reference FILE"
        )
    return gguf_path


def _reference_dir(manifest: store.Manifest) -> Path:
    source = Path(manifest.source)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"the source checkpoint {manifest.source} is not here: give the reference with --reference DIR")
    return source


def _llama_cpp_logprobs(gguf: Path, ids: list[int], threads: int) -> np.ndarray | None:
    """llama.cpp's log-probabilities for every position, where llama-cpp-python is installed (optional)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    model = Llama(
        model_path=str(gguf), n_ctx=len(ids) + 8, n_batch=512, n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False
    )
    model.eval(ids)
    return log_softmax(np.array(model.scores[: len(ids)], dtype=np.float32))


def _reference_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()
