"""The finest grid of positions on which a reused prefix gives a cold prefill's very bits, measured on
this machine at load.

A graph's kernels work through a prefill's rows in tiles from the chunk's first row (ONNX Runtime's
int8 MatMulNBits takes rows in pairs on an AVX-512 Xeon), and a row computed in a tile cut short, or
in a one-row chunk, comes out apart from the same row in a whole tile: by up to about 1.5 logits for
the bundled int8 models (measured). So a prefix reused to the token changes the numbers of the rows
after it. Cut down to a multiple of the tile, with at least two rows left to prefill, every row is
computed in the same tile as cold (the engine does both when exact). The tile is
the kernels' and the CPU's, not the model's, so it is measured, not assumed: a probe prompt is typed
as an editor sends it, each prompt a few tokens past the one before and prefilled on it, on grids of
1, 2, 4, ... positions, until one gives the cold prefill's logits to the bit.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np

from server.engine.prefix_cache import PrefixCache
from server.engine.prompts import Prompt
from server.engine.sampling import SamplingParams
from server.models.store import Manifest


class Engine(Protocol):
    """What the measurement uses of the Engine (engine.py), named here so that neither imports the other."""

    manifest: Manifest
    prefix_cache: PrefixCache | None
    grid: int

    def start(self, prompt: Prompt, params: SamplingParams) -> Any: ...

    def prefill(self, pending: Any) -> object: ...

log = logging.getLogger("slipstream.engine")

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
_PROBE = 160  # tokens: past the largest candidate twice, short enough to measure in a few seconds
# an editor's prompts, each this many tokens past the one before and prefilled on it: their ends and
# what they leave to prefill fall at every offset within a tile of up to 8 rows
_STEPS = (1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 5, 7, 2, 4, 6)


def measure(engine: Engine) -> int | None:
    """The finest candidate grid on which `engine` reuses prefixes exactly, or None when none does."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    probe = [int(t) for t in rng.integers(10, min(engine.manifest.vocab_size, 30000), _PROBE)]
    probe = probe[: min(_PROBE, engine.manifest.context_length - 1)]
    params = SamplingParams(max_tokens=1, temperature=0.0)
    ends = [len(probe) - sum(_STEPS[i:]) for i in range(len(_STEPS) + 1)]
    saved = engine.prefix_cache, engine.grid
    try:
        engine.prefix_cache, engine.grid = None, 1
        cold = [_last_logits(engine, probe[:end], params) for end in ends]
        for grid in CANDIDATES:
            engine.prefix_cache, engine.grid = PrefixCache(budget_bytes=1 << 40), grid  # the probe's alone
            if all(np.array_equal(_last_logits(engine, probe[:end], params), reference)
                   for end, reference in zip(ends, cold, strict=True)):
                log.info("%s: prefixes reused in multiples of %d positions give a cold prefill's bits (measured "
                         "in %.1f s)", engine.manifest.name, grid, time.perf_counter() - started)
                return grid
        return None
    finally:
        engine.prefix_cache, engine.grid = saved


def _last_logits(engine: Engine, ids: list[int], params: SamplingParams) -> np.ndarray:
    pending = engine.start(Prompt(ids=ids, text=""), params)
    while pending.remaining:
        engine.prefill(pending)
    assert pending.last is not None
    return pending.last
