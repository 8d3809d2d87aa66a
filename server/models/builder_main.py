"""onnxruntime-genai's model builder, run as `python -m server.models.builder_main ARGS` (its own
arguments), with what 0.11.4 gets wrong put right first.

Gemma 2 alternates sliding-window and global attention, the sliding one on the even layers (0, 2, ...)
as transformers and llama.cpp run it; the builder's Gemma2Model puts the window on the odd ones, so a
prompt longer than the window (4,096 tokens for Gemma-2 2B/9B) attends wrongly in every layer. Found
by tests/test_gguf_export.py: a tiny Gemma 2 with a 32-token window, verified against transformers.
"""

from __future__ import annotations

import runpy


def _gemma2_even_layers_slide() -> None:
    import onnxruntime_genai.models  # noqa: F401  (puts its folder on sys.path: builder.py imports `builders`)
    from builders.gemma import Gemma2Model

    Gemma2Model.is_local = lambda self, layer_id: layer_id % 2 == 0  # Gemma 3 defines its own


if __name__ == "__main__":
    _gemma2_even_layers_slide()
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)
