"""BM25 over a corpus's passages: our own sparse index in numpy, memory-mapped when loaded.

Why not a library: measured on dict-gcide (bench/search_index.py, docs/search_corpus.md), DuckDB's `fts`
extension builds its index in SQL and answers `match_bm25` by scanning its term table (tens of milliseconds a
query), and `bm25s` spent 12 of its 16 s indexing in per-token Python. Here tokenising is one regex and one C-level
dict lookup per token, and everything after it (term frequencies, document frequencies, scores, the
column-compressed matrix) is a handful of numpy calls. Scores are Lucene's BM25 (k1 = 1.5, b = 0.75,
idf = ln(1 + (N - df + 0.5) / (df + 0.5))), computed at index time, so a query only sums the columns of its
terms and takes the top k.

Bounded memory: the index is a list of *shards*, each built from at most `shard_chars` characters of passage
text, saved on its own (`terms.json`, `indptr.npy`, `rows.npy`, `scores.npy`, `maxscore.npy`, `shard.json`) and
memory-mapped. A
query asks every shard for its top k and merges by score. Each shard keeps its own IDF, which for shards of tens
of megabytes of one corpus differs little from the global one; a corpus smaller than one shard (every test,
every dictionary) is exact BM25.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from array import array
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

K1, B = 1.5, 0.75
TOKEN = re.compile(r"\w\w+")
# English function words (the common short list): they carry no signal for BM25 and are a third of the tokens
STOPWORDS = tuple("""a about above after again against all am an and any are as at be because been before being
below between both but by can did do does doing down during each few for from further had has have having he her
here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some such than that the their theirs
them themselves then there these they this those through to too under until up very was we were what when where
which while who whom why will with you your yours yourself yourselves""".split())
_STOP = frozenset(STOPWORDS)


def query_tokens(text: str) -> list[str]:
    """The index terms of a text: lower-cased words of two or more characters, English stopwords removed."""
    return [t for t in TOKEN.findall(text.lower()) if t not in _STOP]


def build_shard(directory: Path, first: int, texts: list[str]) -> None:
    """Index `texts` (passage ids `first ..`) into `directory`, atomically: a shard is there whole or not at all."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    n = len(texts)
    # stopwords take the first ids, so they are dropped with one comparison after the C-level mapping
    vocab: defaultdict[str, int] = defaultdict(itertools.count().__next__)
    for word in STOPWORDS:
        vocab[word]
    lookup, findall = vocab.__getitem__, TOKEN.findall
    ids, lengths = array("i"), array("l")
    for text in texts:
        tokens = findall(text.lower())
        ids.extend(map(lookup, tokens))
        lengths.append(len(tokens))
    stop = len(STOPWORDS)
    token_ids = np.frombuffer(ids, dtype=np.int32) if len(ids) else np.empty(0, np.int32)
    doc_of = np.repeat(np.arange(n, dtype=np.int64), np.frombuffer(lengths, dtype=np.int64) if n else [])
    keep = token_ids >= stop
    token_ids, doc_of = token_ids[keep].astype(np.int64) - stop, doc_of[keep]
    terms = len(vocab) - stop
    doc_len = np.bincount(doc_of, minlength=n).astype(np.float32)
    pairs, tf = np.unique(token_ids * max(n, 1) + doc_of, return_counts=True)  # sorted by term, then passage
    term, row = pairs // max(n, 1), (pairs % max(n, 1)).astype(np.int32)
    df = np.bincount(term, minlength=terms)
    idf = np.log1p((n - df + 0.5) / (df + 0.5)).astype(np.float32)
    avgdl = float(doc_len.mean()) if n and doc_len.mean() > 0 else 1.0
    tf = tf.astype(np.float32)
    scores = idf[term] * tf / (tf + K1 * (1 - B + B * doc_len[row] / avgdl))
    indptr = np.zeros(terms + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    words = [w for w, i in sorted(vocab.items(), key=lambda item: item[1]) if i >= stop]
    np.save(partial / "indptr.npy", indptr)
    np.save(partial / "rows.npy", row)
    np.save(partial / "scores.npy", scores.astype(np.float32))
    best = np.zeros(terms, dtype=np.float32)  # each term's highest score: the bound that lets a query skip it
    if scores.size:
        np.maximum.at(best, term, scores)
    np.save(partial / "maxscore.npy", best)
    (partial / "terms.json").write_text(json.dumps(words, ensure_ascii=False))
    (partial / "shard.json").write_text(json.dumps({"first": first, "count": n, "k1": K1, "b": B, "avgdl": avgdl}))
    os.replace(partial, directory)


@dataclass
class Shard:
    """One saved index over the passage ids `first .. first + count - 1`."""

    path: Path
    first: int
    count: int
    terms: dict[str, int]
    indptr: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    maxscore: np.ndarray

    @classmethod
    def load(cls, path: Path) -> Shard:
        meta = json.loads((path / "shard.json").read_text())
        words = json.loads((path / "terms.json").read_text())
        # plain ndarray views of the memory maps: slicing a np.memmap costs more than the slice itself
        return cls(path, meta["first"], meta["count"], {w: i for i, w in enumerate(words)},
                   np.load(path / "indptr.npy"), np.asarray(np.load(path / "rows.npy", mmap_mode="r")),
                   np.asarray(np.load(path / "scores.npy", mmap_mode="r")), np.load(path / "maxscore.npy"))

    def _columns(self, tokens: list[str]) -> list[int]:
        return [self.terms[t] for t in dict.fromkeys(tokens) if t in self.terms]

    def search(self, tokens: list[str], k: int) -> list[tuple[int, float]]:
        """The best `k` (passage id, score) pairs of this shard, exact, by MaxScore: the rarest terms pick the
        candidate passages, the common ones are only looked up for those candidates (binary search in their
        sorted postings). That is exact once the k-th best candidate beats the sum of the common terms' highest
        scores, which no passage outside the candidates can exceed; until then one more term becomes a picker."""
        columns = self._columns(tokens)
        if not columns:
            return []
        spans = sorted(((int(self.indptr[c]), int(self.indptr[c + 1]), float(self.maxscore[c])) for c in columns),
                       key=lambda span: span[1] - span[0])
        bound = [0.0] * (len(spans) + 1)  # bound[i]: the most that terms i.. can add to a passage
        for i in range(len(spans) - 1, -1, -1):
            bound[i] = bound[i + 1] + spans[i][2]
        for split in range(1, len(spans) + 1):
            candidates, totals = self._sum_postings(spans[:split])
            for a, b, _ in spans[split:]:
                rows = self.rows[a:b]
                at = np.minimum(np.searchsorted(rows, candidates), b - a - 1)
                found = rows[at] == candidates
                totals[found] += self.scores[a:b][at[found]]
            if split == len(spans) or (totals.size >= k and np.partition(totals, totals.size - k)[totals.size - k]
                                       > bound[split]):
                break
        k = min(k, totals.size)
        best = np.argpartition(totals, totals.size - k)[-k:] if k < totals.size else np.arange(totals.size)
        best = best[np.lexsort((candidates[best], -totals[best]))]
        return [(self.first + int(candidates[j]), float(totals[j])) for j in best if totals[j] > 0]

    def _sum_postings(self, spans: list[tuple[int, int, float]]) -> tuple[np.ndarray, np.ndarray]:
        """(passages, summed scores) over the postings of these terms, passages ascending."""
        rows = np.concatenate([self.rows[a:b] for a, b, _ in spans])
        weights = np.concatenate([self.scores[a:b] for a, b, _ in spans])
        if rows.size * 64 < self.count:  # few postings: add up per distinct passage, not over every passage
            candidates, inverse = np.unique(rows, return_inverse=True)
            return candidates, np.bincount(inverse, weights=weights)
        dense = np.bincount(rows, weights=weights, minlength=self.count)
        candidates = np.flatnonzero(dense)
        return candidates, dense[candidates]

    def chunks_with_all(self, tokens: list[str]) -> np.ndarray:
        """Passage ids (global) whose text holds every one of `tokens`."""
        unique = list(dict.fromkeys(tokens))
        if not unique or any(t not in self.terms for t in unique):
            return np.empty(0, dtype=np.int64)
        found: np.ndarray | None = None
        for column in self._columns(unique):
            rows = np.asarray(self.rows[self.indptr[column]:self.indptr[column + 1]])
            found = rows if found is None else np.intersect1d(found, rows, assume_unique=True)
            if found.size == 0:
                break
        return found.astype(np.int64) + self.first


def load_shards(index_dir: Path) -> list[Shard]:
    return [Shard.load(path) for path in sorted(index_dir.glob("shard-*")) if not path.name.endswith(".partial")]


def search_shards(shards: Iterable[Shard], text: str, k: int) -> list[tuple[int, float]]:
    """The best `k` (passage id, score) pairs over all shards, best first."""
    tokens = query_tokens(text)
    if not tokens:
        return []
    merged = [hit for shard in shards for hit in shard.search(tokens, k)]
    merged.sort(key=lambda hit: (-hit[1], hit[0]))
    return merged[:k]
