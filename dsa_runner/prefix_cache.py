"""Prompt KV kept across requests, so a prompt that shares a prefix with an earlier one prefills only the rest.

An agent resends its whole conversation every turn, and pass@k sends one prompt k times: without reuse a
k-turn conversation costs O(k^2) prefill. After each prefill the engine stores the prompt's cache (every
layer of it: main K/V and DSA index keys alike, batch 1) here, keyed by the prompt's token ids. A new
prompt looks for the entry with the longest common prefix of token ids and starts from that many cached
columns.

Why this is exact: with causal attention the K/V (and DSA index keys) of position i depend only on tokens
0..i, so the first m columns of any cached prompt are the columns a cold prefill of another prompt with
the same first m tokens would compute. The last prompt token's logits are needed to draw the first
completion token: an entry keeps the logits of its own last position, so the very same prompt again (n
samples sent as separate requests, a retry, pass@k) reuses them and is bit-identical to its first run;
a prompt that only extends or shares a prefix with an entry recomputes at least its last token.

Bounded by bytes (``budget_bytes``), least recently used entries evicted first; an entry whose key is a
prefix of a newer one's is dropped on insert (the newer one covers it). A budget of 0 turns reuse off.

Without copies: ``store(..., share=True)`` keeps views of the prompt's own cache buffers (the engine's
SlackLayer buffers, which have room past the prompt), and the engine appends the next turn's tokens to
such a buffer in place (``CachedPrefix.buffers``). That is safe because nothing ever rewrites the columns
an entry covers: caches only append past their length, and the engine continues a buffer in place only
when no running row still writes to it (else it copies the prefix).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass
class CachedPrefix:
    """The layers' (keys, values) of one prompt, each (1, H, S, d), the logits at its last position, and
    the bytes they hold."""

    ids: tuple[int, ...]
    tensors: list[tuple[torch.Tensor, torch.Tensor] | None]  # None: a layer the cache never filled
    nbytes: int
    last_logits: torch.Tensor | None = None
    # per layer the whole (keys, values) buffers the views above start, when shared (store(share=True))
    buffers: list[tuple[torch.Tensor, torch.Tensor] | None] | None = None


def common_prefix_length(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    if a[:n] == tuple(b[:n]):  # the usual case (the next turn of a conversation): one comparison
        return n
    lo, hi = 0, n  # the longest equal prefix, by bisection over slice comparisons (C speed, not per token)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == tuple(b[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


class PrefixCache:
    """LRU store of prompt caches, bounded by ``budget_bytes``; thread-safe (the engine thread writes, the
    server's /health reads)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = max(0, int(budget_bytes))
        self._entries: OrderedDict[tuple[int, ...], CachedPrefix] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes_used = 0
        self.hits = 0
        self.evictions = 0

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, ids: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry sharing the longest prefix with ``ids`` and how many of its columns to reuse; (None, 0)
        when none helps. All ``len(ids)`` only for an entry of exactly these ids that kept its last logits;
        otherwise at most ``len(ids) - 1``: the last token is run, for its logits."""
        if not self.enabled or len(ids) < 2:
            return None, 0
        with self._lock:
            best, best_len = None, 0
            for entry in self._entries.values():
                m = common_prefix_length(entry.ids, ids)
                if m > best_len:
                    best, best_len = entry, m
            whole = best is not None and best_len == len(ids) == len(best.ids) and best.last_logits is not None
            if not whole:
                best_len = min(best_len, len(ids) - 1)
            if best is None or best_len == 0:
                return None, 0
            self._entries.move_to_end(best.ids)
            self.hits += 1
            return best, best_len

    def store(self, ids: list[int], layers, last_logits: torch.Tensor | None = None, *, share: bool = False) -> None:
        """Keeps the prompt's cache ``layers`` (transformers cache layers, batch 1, exactly ``len(ids)``
        columns) and a copy of its ``last_logits`` (1, vocab): the layers copied, or with ``share`` views of
        the layers' own buffers (``SlackLayer``), which the caller then never rewrites below ``len(ids)``;
        evicts least recently used entries to stay within the budget (a shared buffer counts whole, spare
        columns included)."""
        if not self.enabled:
            return
        tensors, buffers, nbytes = [], [], 0
        for layer in layers:
            if not getattr(layer, "is_initialized", False):
                tensors.append(None)
                buffers.append(None)
                continue
            if share and getattr(layer, "_k", None) is not None:
                k, v = layer.keys, layer.values
                buffers.append((layer._k, layer._v))
                nbytes += layer._k.untyped_storage().nbytes() + layer._v.untyped_storage().nbytes()
            else:
                k, v = layer.keys.contiguous().clone(), layer.values.contiguous().clone()
                buffers.append(None)
                nbytes += k.nbytes + v.nbytes
            tensors.append((k, v))
        if last_logits is not None:
            last_logits = last_logits.detach().clone()
            nbytes += last_logits.nbytes
        if nbytes > self.budget_bytes:
            return  # larger than the whole budget: keeping it would evict everything for one entry
        key = tuple(ids)
        with self._lock:
            for other in [k for k in self._entries if len(k) <= len(key) and key[:len(k)] == k]:
                self.bytes_used -= self._entries.pop(other).nbytes
            self._entries[key] = CachedPrefix(key, tensors, nbytes, last_logits, buffers if share else None)
            self.bytes_used += nbytes
            while self.bytes_used > self.budget_bytes:
                _, old = self._entries.popitem(last=False)
                self.bytes_used -= old.nbytes
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes_used = 0

    def load(self) -> dict:
        with self._lock:
            return {"prefix_cache_entries": len(self._entries), "prefix_cache_bytes": self.bytes_used,
                    "prefix_cache_budget_bytes": self.budget_bytes, "prefix_cache_hits": self.hits,
                    "prefix_cache_evictions": self.evictions}
