"""Keys and values of earlier prompts (and of what finished requests generated), kept across requests
and keyed by token ids, so that a new prompt prefills only what no earlier one held.

A radix tree per salt (a salt per API key: a request never reuses what another key's requests left,
whose timing would tell what they typed). Each node holds a run of tokens and views of their keys and
values, [1, kv_heads, run, head_dim] per layer, on the host, in the block that the insert read them
into: splitting a node where a prompt leaves it (what every editor request does to the one before)
copies nothing, and a block's memory counts against the budget until its last node goes. A lookup
walks the tree along the prompt, at token
granularity, and returns the longest stored prefix (never the whole prompt: its last token is
prefilled, to give the logits of the first new one). An insert stores only the positions not yet
stored, splitting a node where a prompt leaves it. Past the memory budget, the least recently used
leaves go first.

Editor traffic is the case it is built for: each prompt is the file up to the cursor, so consecutive
prompts share all but their last few tokens.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

# reads positions [start, end) of the row that holds a prompt: KVCache.read bound to that row
Reader = Callable[[int, int], dict[str, np.ndarray]]


@dataclass(eq=False)
class _Block:
    """What one insert read out of a row: the arrays that hold the memory. Nodes hold views of them, so
    that splitting a node copies nothing; the block's bytes count until its last node is evicted."""

    kv: dict[str, np.ndarray]  # past_key_values.N.key/value -> [1, kv_heads, positions, head_dim]
    nodes: int = 0

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.kv.values())


@dataclass(eq=False)
class _Node:
    tokens: np.ndarray  # int64, the run from the parent to here
    block: _Block | None  # holds this run's keys and values at [start, start + len(tokens)); None: a root
    start: int
    parent: _Node | None
    children: dict[int, _Node] = field(default_factory=dict)  # by first token
    used: int = 0  # the LRU clock when a lookup or an insert last went through

    def kv(self, take: int | None = None) -> dict[str, np.ndarray]:
        """Views of this run's first `take` (default all) positions."""
        assert self.block is not None
        end = self.start + (len(self.tokens) if take is None else take)
        return {k: v[:, :, self.start : end] for k, v in self.block.kv.items()}


@dataclass
class CacheStats:
    budget_bytes: int
    bytes: int = 0  # held now
    lookups: int = 0
    hits: int = 0  # lookups that reused at least one token
    tokens_reused: int = 0
    tokens_stored: int = 0
    evictions: int = 0  # nodes dropped to stay under the budget


class PrefixCache:
    def __init__(self, budget_bytes: int) -> None:
        self.stats = CacheStats(budget_bytes)
        self._roots: dict[str, _Node] = {}
        self._clock = itertools.count(1)
        self._lock = threading.Lock()  # the scheduler's thread and a direct `generate` may share the engine

    def lookup(self, salt: str, ids: list[int], multiple: int = 1, leave: int = 1) -> tuple[int, list[dict[str, np.ndarray]]]:
        """The longest stored prefix of `ids` short of its last `leave` tokens, cut down to a multiple of
        `multiple` tokens: its length, and its keys and values as runs of [1, kv_heads, run, head_dim]
        arrays in order (views of what is stored, which inserts and evictions leave as they are)."""
        with self._lock:
            self.stats.lookups += 1
            root = self._roots.get(salt)
            if root is None or len(ids) <= leave:
                return 0, []
            wanted = np.asarray(ids[:-leave], dtype=np.int64)
            now = next(self._clock)
            path: list[tuple[_Node, int]] = []  # each node walked, with how many of its tokens match
            node, at = root, 0
            while at < len(wanted) and (child := node.children.get(int(wanted[at]))) is not None:
                run = common_prefix(child.tokens, wanted[at:])
                child.used = now
                path.append((child, run))
                at += run
                if run < len(child.tokens):
                    break
                node = child
            found = at // multiple * multiple
            if not found:
                return 0, []
            pieces, left = [], found
            for child, run in path:
                take = min(run, left)
                pieces.append(child.kv(take))
                left -= take
                if not left:
                    break
            self.stats.hits += 1
            self.stats.tokens_reused += found
            return found, pieces

    def insert(self, salt: str, ids: list[int], read: Reader) -> None:
        """Store the keys and values of `ids` (those not stored yet, read from the row that holds them)."""
        with self._lock:
            tokens = np.asarray(ids, dtype=np.int64)
            root = self._roots.setdefault(salt, _Node(tokens[:0], None, 0, None))
            now = next(self._clock)
            node, at = root, 0
            while at < len(tokens):
                child = node.children.get(int(tokens[at]))
                if child is None:
                    block = _Block(read(at, len(tokens)), nodes=1)
                    node.children[int(tokens[at])] = _Node(tokens[at:].copy(), block, 0, node, used=now)
                    self.stats.bytes += block.nbytes
                    self.stats.tokens_stored += len(tokens) - at
                    break
                run = common_prefix(child.tokens, tokens[at:])
                if run < len(child.tokens):
                    child = self._split(child, run)
                child.used = now
                node, at = child, at + run
            self._evict()

    def _split(self, node: _Node, run: int) -> _Node:
        """Cut `node` after `run` tokens: the head takes its place, the rest becomes the head's child;
        both view the same block."""
        parent = node.parent
        assert parent is not None and node.block is not None
        head = _Node(node.tokens[:run], node.block, node.start, parent, used=node.used)
        node.block.nodes += 1
        node.tokens, node.start, node.parent = node.tokens[run:], node.start + run, head
        head.children[int(node.tokens[0])] = node
        parent.children[int(head.tokens[0])] = head
        return head

    def _evict(self) -> None:
        while self.stats.bytes > self.stats.budget_bytes:
            leaves = [n for n in _walk(self._roots.values()) if not n.children and n.parent is not None]
            if not leaves:
                return
            victim = min(leaves, key=lambda n: n.used)
            assert victim.parent is not None
            del victim.parent.children[int(victim.tokens[0])]
            assert victim.block is not None
            victim.block.nodes -= 1
            if not victim.block.nodes:
                self.stats.bytes -= victim.block.nbytes
            self.stats.evictions += 1


def common_prefix(run: np.ndarray, ids: np.ndarray) -> int:
    """How many leading tokens `run` and `ids` share."""
    n = min(len(run), len(ids))
    differ = np.flatnonzero(run[:n] != ids[:n])
    return int(differ[0]) if differ.size else n


def _walk(roots: Iterable[_Node]) -> list[_Node]:
    out: list[_Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.children.values())
    return out
