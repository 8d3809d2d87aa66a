"""The next token of every row of a request at once: logits [rows, V] -> tokens [rows], in passes over a
few rows at a time (logit bias, penalties, temperature, min-p, top-k, top-p, the log-sum-exp logprobs
need), then a short loop over the rows for what is left, each on a few candidates.

Every operation works within a row (a reduction over a row's columns runs as it would on that row
alone), and each row draws from its own seeded generator, one number a token: a row's token does not
depend on its neighbours, on the batch size, or on the order of rows.

The vocabulary is cut into blocks of `BLOCK` columns. A block's largest weight tells whether any of its
tokens can pass a cut, so finding the few tokens above a cut reads the block maxima and then only the
blocks that hold such a token (Gemma-3: 256 blocks of 262k columns); a block's sum lets a draw over
the whole vocabulary find its block before its token.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from server.engine.sampling import SamplingParams

BLOCK = 1024
# Cuts, relative to the most likely token's weight, tried from the top until the tokens above one hold
# what top-k or top-p need; the last keeps every token whose weight is not 0 (the others cannot be drawn).
_CUTS = (1e-2, 1e-4, 1e-6, 1e-9, 1e-15, 1e-25, float(np.finfo(np.float32).smallest_subnormal))
_TEMPERED_CUTS = (1e-2, 1e-4)
_scratch = threading.local()  # scratch buffers, per thread (an engine per model, each on its own thread)
_SPLIT_ELEMENTS = 1 << 19  # a smaller step samples on one thread: the hand-off to another costs more than it saves
_CHUNK_ELEMENTS = 1 << 18  # logits sampled together: 1 MB, which stays in a core's cache through the passes


class Sampler:
    """Samples a step's rows of one request on `threads` threads (the engine's own count: between two
    steps ONNX Runtime's threads are idle, and do not spin: server/engine/runner.py), each taking a slice
    of the rows; numpy's passes release the GIL. A slice's rows are sampled as they would be alone."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="sampler") if self.threads > 1 else None

    def sample(
        self, logits: np.ndarray, params: SamplingParams, rngs: list[np.random.Generator], counts: list[dict[int, int]], scored: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """As `sample`, the rows split over the threads where the step is large enough to pay for it."""
        rows = logits.shape[0]
        parts = min(self.threads, rows) if logits.size >= _SPLIT_ELEMENTS and not params.greedy else 1
        if parts == 1 or self._pool is None:
            return sample(logits, params, rngs, counts, scored)
        edges = [rows * i // parts for i in range(parts + 1)]
        slices = [slice(a, b) for a, b in zip(edges, edges[1:], strict=False)]
        futures = [self._pool.submit(sample, logits[s], params, rngs[s], counts[s], scored) for s in slices[1:]]
        first = slices[0]
        done = [sample(logits[first], params, rngs[first], counts[first], scored)] + [f.result() for f in futures]
        tokens = np.concatenate([t for t, _ in done])
        return tokens, (np.concatenate([lse for _, lse in done if lse is not None]) if scored else None)


def sample(
    logits: np.ndarray, params: SamplingParams, rngs: list[np.random.Generator], counts: list[dict[int, int]], scored: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """[rows, V] raw logits -> each row's token (row r drawn with rngs[r], after counts[r]'s penalties)
    and, if `scored`, the log-normaliser of each row's raw logits (logprobs: logit - lse).

    A few rows at a time, so that a chunk's logits and weights stay in cache through the passes over
    them: a pass over all of a 64-row step's logits at once (67 MB for Gemma-3) waits on memory."""
    rows, vocab = logits.shape
    tokens = np.empty(rows, dtype=np.int64)
    lse = np.empty(rows, dtype=np.float32) if scored else None
    for part in _chunks(rows, vocab):
        raw = logits[part]
        adjusted = adjust(raw, params, counts[part])
        if lse is not None and adjusted is raw and _on_raw_weights(params, vocab):
            # sampling reads the raw softmax's numerators: the logprobs come from the same pass
            tokens[part], lse[part] = choose(raw, params, rngs[part], with_lse=True)
            continue
        if lse is not None:
            lse[part] = log_sum_exp(raw)
        tokens[part] = choose(adjusted, params, rngs[part])[0]
    return tokens, lse


def log_sum_exp(logits: np.ndarray) -> np.ndarray:
    """[rows, V] -> [rows] float32: each row's log-normaliser, for logprobs (logit - lse). A few rows at a
    time: an echoed prompt's logits are thousands of rows, and the scratch stays one chunk's."""
    rows, vocab = logits.shape
    out = np.empty(rows, dtype=np.float32)
    for part in _chunks(rows, vocab):
        chunk = logits[part]
        top = chunk.max(axis=1, keepdims=True)
        work = _buffer("lse", chunk.shape)
        np.subtract(chunk, top, out=work)
        np.exp(work, out=work)
        out[part] = top[:, 0] + np.log(work.sum(axis=1))
    return out


def _chunks(rows: int, vocab: int) -> Iterator[slice]:
    """The rows a few at a time: about _CHUNK_ELEMENTS logits each, at least one row."""
    step = max(1, _CHUNK_ELEMENTS // vocab)
    for first in range(0, rows, step):
        yield slice(first, first + step)


def adjust(logits: np.ndarray, params: SamplingParams, counts: list[dict[int, int]]) -> np.ndarray:
    """logit_bias (every row alike), then OpenAI's presence and frequency penalties over each row's own
    tokens so far; a copy only when something changes."""
    penalised = (params.presence_penalty or params.frequency_penalty) and any(counts)
    if not (params.logit_bias or penalised):
        return logits
    logits = logits.copy()
    if params.logit_bias:
        ids = np.fromiter(params.logit_bias.keys(), dtype=np.int64)
        logits[:, ids] += np.fromiter(params.logit_bias.values(), dtype=np.float32)
    if penalised:
        rows = np.concatenate([np.full(len(c), r, dtype=np.int64) for r, c in enumerate(counts)])
        ids = np.concatenate([np.fromiter(c.keys(), dtype=np.int64, count=len(c)) for c in counts])
        freq = np.concatenate([np.fromiter(c.values(), dtype=np.float32, count=len(c)) for c in counts])
        logits[rows, ids] -= np.float32(params.frequency_penalty) * freq + np.float32(params.presence_penalty)
    return logits


def choose(
    logits: np.ndarray, params: SamplingParams, rngs: list[np.random.Generator], with_lse: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """[rows, V] adjusted logits -> [rows] int64 tokens, row r drawn with rngs[r]; with_lse (where
    `_on_raw_weights`): also each row's log-normaliser, from the same pass."""
    if params.greedy:
        return logits.argmax(axis=1), None
    rows, vocab = logits.shape
    raw = _on_raw_weights(params, vocab)
    assert raw or not with_lse
    # a truncated draw below temperature 1 reads exp(logit - max) and tempers its candidates only
    top = logits.max(axis=1, keepdims=True)
    weights, tiled = _weights("weights", logits, top, 1.0 if raw else params.temperature)
    top_k = params.top_k if params.top_k < vocab else 0
    whole = top_k <= 0 and params.min_p <= 0  # top-p (if any) chooses among the whole vocabulary
    sums = tiled.sum(axis=2) if whole or with_lse else None
    if params.temperature < 1.0 and raw:
        tops = tiled.max(axis=2)
        out = np.array(
            [
                _tempered(logits[r : r + 1], top[r : r + 1], tiled[r], tops[r], None if sums is None else sums[r], top_k, params, rngs[r])
                for r in range(rows)
            ],
            dtype=np.int64,
        )
    else:
        out = _pick(weights, tiled, sums, top_k, params, rngs)
    if not with_lse:
        return out, None
    assert sums is not None
    return out, (top[:, 0] + np.log(sums.sum(axis=1, dtype=np.float64))).astype(np.float32)


def _weights(name: str, logits: np.ndarray, top: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """Each row's weights relative to its most likely token (which gets 1), exp((logit - max) / T), in a
    scratch array padded with zeros to whole blocks; and the same as [rows, blocks, BLOCK]."""
    rows, vocab = logits.shape
    blocks = -(-vocab // BLOCK)
    weights = _buffer(name, (rows, blocks * BLOCK))
    np.subtract(logits, top, out=weights[:, :vocab])
    if temperature != 1.0:
        np.multiply(weights[:, :vocab], np.float32(1.0 / temperature), out=weights[:, :vocab])
    np.exp(weights[:, :vocab], out=weights[:, :vocab])
    weights[:, vocab:] = 0.0
    return weights, weights.reshape(rows, blocks, BLOCK)


def _on_raw_weights(params: SamplingParams, vocab: int) -> bool:
    """Whether a draw reads exp(logit - max), the raw softmax's numerators: at temperature 1, and for a
    draw that min-p, top-k or top-p cut below temperature 1 (its candidates tempered alone)."""
    cut = params.min_p > 0 or 0 < params.top_k < vocab or params.top_p < 1.0
    return not params.greedy and (params.temperature == 1.0 or (params.temperature < 1.0 and cut))


def _tempered(
    logits: np.ndarray,
    top: np.ndarray,
    tiled: np.ndarray,
    tops: np.ndarray,
    sums: np.ndarray | None,
    top_k: int,
    params: SamplingParams,
    rng: np.random.Generator,
) -> int:
    """One row's draw (logits, top: [1, V], [1, 1]; sums: its block sums of e, where the pool is the
    whole vocabulary) at temperature T < 1 from raw weights e = exp(logit - max): the weight at T is
    e^(1/T), computed for the tokens above a cut of e only. A token below a cut c weighs at most
    c^(1/T - 1) times its raw weight, so the tokens outside hold at most that share of the raw mass
    left outside: where the nucleus is the same at both ends of that bound, it is exact. A row that
    two cuts do not settle is weighed whole at T (one more pass over it)."""
    inverse, flat = 1.0 / params.temperature, tiled.reshape(-1)
    floor = params.min_p**params.temperature * (1 - 1e-6) if params.min_p > 0 else 0.0  # w >= min_p <=> e >= min_p^T
    raw_total = float(sums.sum(dtype=np.float64)) if sums is not None else 0.0
    for cut in _TEMPERED_CUTS:
        found = _above(tiled, tops, max(cut, floor))
        if top_k and found.size < top_k and floor < cut:
            continue
        raw = flat[found].astype(np.float64)
        weights = raw**inverse
        if params.min_p > 0:
            keep = weights >= params.min_p
            found, raw, weights = found[keep], raw[keep], weights[keep]
        if top_k and found.size > top_k:
            keep = np.argpartition(-weights, top_k - 1)[:top_k]
            found, raw, weights = found[keep], raw[keep], weights[keep]
        order = np.argsort(-weights, kind="stable")
        found, weights = found[order], weights[order]
        if params.top_p >= 1.0:
            return int(found[_draw(weights, rng)])
        inside = float(weights.sum())
        outside = 0.0  # the pool is all inside: top-k's or min-p's
        if not (top_k or params.min_p > 0):
            outside = max(raw_total - float(raw.sum()), 0.0) * max(cut, floor) ** (inverse - 1) + 1e-6 * inside
        cumulative = np.cumsum(weights)
        low = int(np.searchsorted(cumulative, params.top_p * inside))
        high = int(np.searchsorted(cumulative, params.top_p * (inside + outside)))
        if low == high and high < len(cumulative):
            return int(found[_draw(weights[: high + 1], rng)])
    row, whole = _weights("row", logits, top, params.temperature)
    return int(_pick(row, whole, None, top_k, params, [rng])[0])


def _pick(
    weights: np.ndarray, tiled: np.ndarray, sums: np.ndarray | None, top_k: int, params: SamplingParams, rngs: list[np.random.Generator]
) -> np.ndarray:
    """Each row's draw from its weights; sums: the block sums where the caller has them (else taken
    here where the pool is the whole vocabulary)."""
    rows = weights.shape[0]
    whole = top_k <= 0 and params.min_p <= 0
    if whole and sums is None:
        sums = tiled.sum(axis=2)
    if whole and params.top_p >= 1.0:  # nothing cut: a draw over the whole vocabulary
        assert sums is not None
        return np.array([_draw_any(tiled[r], sums[r], rngs[r]) for r in range(rows)], dtype=np.int64)
    tops = tiled.max(axis=2)
    out = np.empty(rows, dtype=np.int64)
    for r in range(rows):
        if whole:
            assert sums is not None
            pool, total = None, float(sums[r].sum(dtype=np.float64))
        else:
            pool, total = _pool(tiled[r], tops[r], top_k, params.min_p)
        if params.top_p < 1.0:
            pool = _nucleus(tiled[r], tops[r], pool, total, params.top_p)
        assert pool is not None
        out[r] = pool[_draw(weights[r, pool].astype(np.float64), rngs[r])]
    return out


def _pool(tiled: np.ndarray, tops: np.ndarray, top_k: int, min_p: float) -> tuple[np.ndarray, float]:
    """What top-p chooses from when something else cuts first: the tokens min-p keeps (weight >= min_p),
    of them the top_k most likely. With its mass."""
    flat = tiled.reshape(-1)
    if top_k <= 0:
        found = _above(tiled, tops, min_p)
        return found, float(flat[found].sum(dtype=np.float64))
    for cut in _CUTS:
        found = _above(tiled, tops, max(cut, min_p))
        if found.size >= top_k or cut <= min_p:
            break
    weights = flat[found]
    if found.size > top_k:
        keep = np.argpartition(-weights, top_k - 1)[:top_k]
        found, weights = found[keep], weights[keep]
    return found, float(weights.sum(dtype=np.float64))


def _nucleus(tiled: np.ndarray, tops: np.ndarray, pool: np.ndarray | None, total: float, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens of the pool holding top_p of its mass, most likely first.
    Every token under a cut is less likely than every token above it, so once the tokens above a cut
    hold top_p of the mass the nucleus lies among them: the set is exact."""
    flat = tiled.reshape(-1)
    if pool is None:
        for cut in _CUTS:
            pool = _above(tiled, tops, cut)
            if float(flat[pool].sum(dtype=np.float64)) >= top_p * total:
                break
    assert pool is not None
    mass = flat[pool].astype(np.float64) / total
    order = np.argsort(-mass, kind="stable")
    keep = int(np.searchsorted(np.cumsum(mass[order]), top_p)) + 1
    return pool[order[:keep]]


def _above(tiled: np.ndarray, tops: np.ndarray, cut: float) -> np.ndarray:
    """Column indexes (ascending) of one row's tokens with weight >= cut, reading only the blocks whose
    largest weight reaches it."""
    hit = np.flatnonzero(tops >= cut)
    block, column = np.nonzero(tiled[hit] >= cut)
    return hit[block] * BLOCK + column


def _draw_any(tiled: np.ndarray, sums: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse CDF over one row's whole vocabulary: the block, then the token in it."""
    cumulative = np.cumsum(sums, dtype=np.float64)
    target = rng.random() * cumulative[-1]
    block = min(int(np.searchsorted(cumulative, target, side="right")), len(sums) - 1)
    inside = np.cumsum(tiled[block], dtype=np.float64)
    rest = target - (cumulative[block - 1] if block else 0.0)
    column = int(np.searchsorted(inside, rest, side="right"))
    if column >= BLOCK or tiled[block, column] == 0:  # rounding past the block's end: its last token that can be drawn
        column = int(np.flatnonzero(tiled[block])[-1])
    return block * BLOCK + column


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    # inverse CDF: one uniform number per token, so the stream of draws is reproducible per seed
    cumulative = np.cumsum(weights)
    return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), weights.shape[0] - 1)


def _buffer(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 scratch array of this shape, kept per thread and per shape (a step's chunks take at
    most two: the whole ones and the last), so that each step does not allocate and fault in its own."""
    held: dict[tuple[str, tuple[int, ...]], np.ndarray] | None = getattr(_scratch, "held", None)
    if held is None:
        held = _scratch.held = {}
    key = (name, shape)
    if key not in held:
        if len(held) >= 8:  # rows or vocabulary changed (another model, another chunk): start again
            held.clear()
        held[key] = np.empty(shape, dtype=np.float32)
    return held[key]
