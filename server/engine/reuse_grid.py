"""How an engine reuses its prefix cache (`ReusePolicy`), and the finest grid of positions on which a
reused prefix gives a cold prefill's very bits, measured on this machine at load (`measure`).

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from server.engine.prompts import Prompt
from server.engine.sampling import SamplingParams
from server.models.store import Manifest

log = logging.getLogger("slipstream.engine")

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
_PROBE = 160  # tokens: past the largest candidate twice, short enough to measure in a few seconds
# an editor's prompts, each this many tokens past the one before and prefilled on it: their ends and
# what they leave to prefill fall at every offset within a tile of up to 8 rows
_STEPS = (1, 2, 3, 4, 5, 6, 7, 8, 1, 3, 5, 7, 2, 4, 6)


@dataclass(frozen=True)
class ReusePolicy:
    """How cached prefixes are reused. Exact: in whole tiles of `grid` positions with at least two
    positions left to prefill (the rest of a prompt is never prefilled as one row alone: a one-row
    step takes the one-row kernels, whose sums differ), and only prompts are kept, not what requests
    generated (computed one step at a time, the same way); a prompt's numbers are then the same bits
    warm or cold. Not exact: to the token, generated text kept too, logits within the graph's tolerance."""

    grid: int = 1
    exact: bool = False

    @property
    def leave(self) -> int:
        """Prompt positions a lookup leaves to prefill, at least."""
        return 2 if self.exact else 1

    @property
    def keeps_generated(self) -> bool:
        """Whether finished rows' generated tokens go into the prefix cache."""
        return not self.exact

    def reusable(self, prompt: list[int]) -> list[int]:
        """The prompt positions worth keeping. Exact: those in whole tiles (a prompt's last rows in a tile
        cut short came out apart from the same rows in a whole tile, as a longer prompt computes them
        cold); else all."""
        return prompt[: len(prompt) // self.grid * self.grid] if self.exact else prompt


class Pending(Protocol):
    """A prompt on its way in (engine.py's Prefill), as the measurement reads it."""

    last: npt.NDArray[np.float32] | None  # the last position's logits, once all is prefilled

    @property
    def remaining(self) -> int: ...


class Prefilling(Protocol):
    """What the measurement uses of an Engine (engine.py): named here so that this module needs none."""

    def start(self, prompt: Prompt, params: SamplingParams) -> Pending: ...

    def prefill(self, pending: Any) -> object: ...


def measure(probe: Callable[[ReusePolicy | None], Prefilling], manifest: Manifest) -> ReusePolicy:
    """The exact policy on the finest candidate grid that reuses prefixes to the bit, or reuse to the token
    when none does. `probe(policy)` is the engine under test with a prefix cache of its own for the
    probe (None: without one, the cold reference); it shares the model's session."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    tokens = [int(t) for t in rng.integers(10, min(manifest.vocab_size, 30000), _PROBE)]
    tokens = tokens[: min(_PROBE, manifest.context_length - 1)]
    params = SamplingParams(max_tokens=1, temperature=0.0)
    ends = [len(tokens) - sum(_STEPS[i:]) for i in range(len(_STEPS) + 1)]
    cold_engine = probe(None)
    cold = [_last_logits(cold_engine, tokens[:end], params) for end in ends]
    for grid in CANDIDATES:
        policy = ReusePolicy(grid, exact=True)
        warm = probe(policy)
        if all(np.array_equal(_last_logits(warm, tokens[:end], params), reference) for end, reference in zip(ends, cold, strict=True)):
            log.info(
                "%s: prefixes reused in multiples of %d positions give a cold prefill's bits (measured in %.1f s)",
                manifest.name,
                grid,
                time.perf_counter() - started,
            )
            return policy
    log.warning(
        "%s: no grid up to %d positions makes a reused prefix give a cold prefill's bits on this "
        "machine: prefixes are reused to the token, with logits within the graph's own tolerance",
        manifest.name,
        CANDIDATES[-1],
    )
    return ReusePolicy()


def _last_logits(engine: Prefilling, ids: list[int], params: SamplingParams) -> npt.NDArray[np.float32]:
    pending = engine.start(Prompt(ids=ids, text=""), params)
    while pending.remaining:
        engine.prefill(pending)
    assert pending.last is not None
    return pending.last
