"""BM25 over a corpus's chunks, with `bm25s` (sparse score matrices in numpy, memory-mapped when loaded).

Measured against DuckDB's `fts` extension on dict-gcide (bench/search_index.py --compare-duckdb): `bm25s`
built the index several times faster and answered queries in about a millisecond where `match_bm25` scans its
term table, so it is the backend (docs/search_corpus.md has the figures).

Bounded memory: the index is a list of *shards*, each built from at most `shard_chars` characters of chunk
text, saved and memory-mapped on its own. A query asks every shard for its top k and merges by score. Each
shard keeps its own IDF, which for shards of tens of megabytes of the same corpus differs little from the
global one; a corpus smaller than one shard (every test, every dictionary) is exact BM25.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

STOPWORDS = "en"


def query_tokens(text: str) -> list[str]:
    """The index terms of a query: lower-cased words of two or more letters, English stopwords removed."""
    return bm25s.tokenize([text], stopwords=STOPWORDS, return_ids=False, show_progress=False)[0]


@dataclass
class Shard:
    """One saved index over the chunk ids `first .. first + count - 1`."""

    path: Path
    first: int
    count: int
    retriever: bm25s.BM25

    def search(self, tokens: list[str], k: int) -> list[tuple[int, float]]:
        known = [t for t in tokens if t in self.retriever.vocab_dict]
        if not known or self.count == 0:
            return []
        ids, scores = self.retriever.retrieve([known], k=min(k, self.count), show_progress=False, n_threads=1)
        return [(self.first + int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def chunks_with_all(self, tokens: list[str]) -> np.ndarray:
        """Chunk ids (global) whose text holds every one of `tokens`."""
        vocab = self.retriever.vocab_dict
        if not tokens or any(t not in vocab for t in tokens):
            return np.empty(0, dtype=np.int64)
        indptr, indices = self.retriever.scores["indptr"], self.retriever.scores["indices"]
        found: np.ndarray | None = None
        for token in tokens:
            column = vocab[token]
            rows = np.asarray(indices[indptr[column]:indptr[column + 1]])
            found = rows if found is None else np.intersect1d(found, rows, assume_unique=True)
            if found.size == 0:
                break
        return found.astype(np.int64) + self.first


def build_shard(directory: Path, first: int, texts: list[str]) -> None:
    """Index `texts` (chunk ids `first ..`) into `directory`, atomically: a shard is there whole or not at all."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokens = bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    retriever.save(str(partial))
    (partial / "range.json").write_text(json.dumps({"first": first, "count": len(texts)}))
    os.replace(partial, directory)


def load_shards(index_dir: Path) -> list[Shard]:
    shards = []
    for path in sorted(index_dir.glob("shard-*")):
        if path.name.endswith(".partial"):
            continue
        span = json.loads((path / "range.json").read_text())
        retriever = bm25s.BM25.load(str(path), mmap=True, show_progress=False, verbosity=0)
        shards.append(Shard(path, span["first"], span["count"], retriever))
    return shards


def search_shards(shards: Iterable[Shard], text: str, k: int) -> list[tuple[int, float]]:
    """The best `k` (chunk id, score) pairs over all shards, best first."""
    tokens = query_tokens(text)
    if not tokens:
        return []
    merged = [hit for shard in shards for hit in shard.search(tokens, k)]
    merged.sort(key=lambda hit: (-hit[1], hit[0]))
    return merged[:k]
