"""Prefix-aware routing on Ray Serve: a request goes to the engine replica that most likely holds the
keys and values of its prompt's longest prefix under the same salt (API key), unless that replica is
busier than the least busy one by more than `imbalance` requests; a prompt no replica holds goes by
power of two choices.

The router runs in the ingress process (one per ingress replica) and remembers where it sent each
prompt: a chain of hashes over blocks of `block_tokens` token ids, the first seeded by the salt, so a
prompt matches another only as far as both have the same tokens under the same key, and two keys'
identical prompts never match. It is the engine's own unit (token ids after the chat template and the
prompt prefix), not characters of the request (Ray's PrefixCacheAffinityRouter), and an entry leaves
with its replica when the replica dies. Load is the replica's requests in flight as Serve probes them,
else as the replica last reported them (record_routing_stats: decoding and waiting).
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from server.engine import Prompt

BLOCK_TOKENS = 16
MAX_BLOCKS = 200_000  # the blocks remembered (about 30 MB); the least recently routed go first


def block_hashes(prompt: Prompt, block_tokens: int = BLOCK_TOKENS) -> list[bytes]:
    """One hash per whole block of the prompt's ids, each over the salt and every block up to it."""
    chain, hashes = hashlib.sha256(prompt.cache_salt.encode()).digest(), []
    whole = len(prompt.ids) - len(prompt.ids) % block_tokens
    for start in range(0, whole, block_tokens):
        block = ",".join(map(str, prompt.ids[start : start + block_tokens])).encode()
        chain = hashlib.sha256(chain + block).digest()
        hashes.append(chain)
    return hashes


def _prompt_of(pending: PendingRequest | None) -> Prompt | None:
    """The Prompt of an engine call generate(name, prompt, params)."""
    if pending is None:
        return None
    found = [a for a in (*pending.args, *pending.kwargs.values()) if isinstance(a, Prompt)]
    return found[0] if found else None


class PrefixRouter(RequestRouter):
    def initialize_state(self, block_tokens: int = BLOCK_TOKENS, imbalance: int = 4, **_: Any) -> None:
        self._block_tokens, self._imbalance = block_tokens, imbalance
        self._where: OrderedDict[bytes, ReplicaID] = OrderedDict()  # block chain hash -> replica last sent it

    def _load(self, replica: RunningReplica) -> int:
        probed = self.replica_queue_len_cache.get(replica.replica_id)
        if probed is not None:
            return probed
        stats = replica.routing_stats or {}
        return int(stats.get("waiting", 0)) + int(stats.get("rows", 0) > 0)

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # a full replica: wait, do not spin
        by_id = {r.replica_id: r for r in candidate_replicas}
        prompt = _prompt_of(pending_request)
        hashes = block_hashes(prompt, self._block_tokens) if prompt is not None else []
        holder = next((by_id[r] for h in reversed(hashes) if (r := self._where.get(h)) in by_id), None)
        loads = {r.replica_id: self._load(r) for r in candidate_replicas}
        least = min(loads.values())
        if holder is not None and loads[holder.replica_id] - least <= self._imbalance:
            rest = sorted((r for r in candidate_replicas if r is not holder), key=lambda r: loads[r.replica_id])
            return [[holder], *([r] for r in rest)]
        two = random.sample(candidate_replicas, min(2, len(candidate_replicas)))
        two.sort(key=lambda r: loads[r.replica_id])
        rest = [r for r in candidate_replicas if r not in two]
        return [[r] for r in two] + ([rest] if rest else [])

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        prompt = _prompt_of(pending_request)
        for h in block_hashes(prompt, self._block_tokens) if prompt is not None else []:
            self._where[h] = replica_id
            self._where.move_to_end(h)
        while len(self._where) > MAX_BLOCKS:
            self._where.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        for h in [h for h, r in self._where.items() if r == replica_id]:
            del self._where[h]
