"""Every architecture the catalog names exports, generates and verifies against transformers: tiny
random GPT-2, GPT-BigCode (SantaCoder), GPT-NeoX, StarCoder2 (optimum's path), Qwen2 and Gemma-3 (the fused path), in INT8
and fp32. CodeGen and Llama are covered by the other test files."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.engine import Delta, Engine, SamplingParams
from server.models.export import BUILDER_ARCHITECTURES, export_checkpoint
from server.verify import verify
from tests.tiny_model import TINY_CONFIGS, build_tiny


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {arch: build_tiny(arch, root / arch) for arch in TINY_CONFIGS}


@pytest.mark.parametrize("precision", ["int8", "fp32"])
@pytest.mark.parametrize("architecture", list(TINY_CONFIGS))
def test_export_generate_verify(checkpoints: dict[str, Path], tmp_path: Path, architecture: str, precision: str) -> None:
    manifest = export_checkpoint(checkpoints[architecture], tmp_path, "m", precision=precision, log=lambda _l: None)
    assert manifest.architecture == architecture and manifest.precision == precision
    assert manifest.graph == ("genai-builder" if architecture in BUILDER_ARCHITECTURES else "optimum")

    engine = Engine.load(tmp_path, "m", threads=1)
    params = SamplingParams(max_tokens=8, temperature=0.0, logit_bias={0: -100.0}, n=2)
    events = list(engine.generate(engine.prompter.prepare("def f(x):\n    return", 8), params))
    texts = ["".join(e.text for e in events if isinstance(e, Delta) and e.index == i) for i in range(2)]
    assert texts[0] and texts[0] == texts[1]

    report = verify(tmp_path, "m")
    assert report.passed, "\n".join(report.lines())
