"""A local corpus on disk: `<home>/corpora/<name>/` holds everything, outside the DuckDB store, so a long
ingest never locks the store and an export is a copy of the folder.

Layout::

    docs.sqlite        documents (seq, doc_id, title, url, text, links, attributes, doc_hash),
                       chunks (chunk_id -> document seq + character span), ingest state
    index/shard-NNNNN  BM25 shards (numpy arrays, memory-mapped) over `title + passage text`
    info.json          CorpusInfo, written last: a corpus without it is an unfinished ingest

Ingest runs in three resumable phases: (1) documents stream from the source in batches, each batch committed
with the count of source records consumed, so a rerun skips what is stored; (2) chunks are indexed shard by
shard, each shard written atomically; (3) the content hash (sha256 over the per-document hashes ordered by
id) and `info.json`. Memory is bounded by the batch size and the shard size, not by the corpus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from search_synth.corpus.bm25 import build_shard, load_shards, query_tokens, search_shards
from search_synth.corpus.model import CorpusError, CorpusInfo, Document, DocumentPage, SearchHit
from search_synth.corpus.sources import Source

CORPUS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CHUNK_CHARS = 1200  # a search hit is the best passage of this size; a query's words meet within it
PAGE_CHARS = 4000  # what `open` returns at a time: a page an agent can read without flooding its context
SNIPPET_CHARS = 240
BATCH_DOCUMENTS = 2000
SHARD_CHARS = 64_000_000  # text per BM25 shard: bounds the memory of indexing (about 20 bytes per character)
MENTION_CHECK_LIMIT = 2000  # above this many candidate passages, `mentions` counts word co-occurrence only
FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (seq INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
    url TEXT NOT NULL, text TEXT NOT NULL, links TEXT NOT NULL, attributes TEXT NOT NULL, doc_hash TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (chunk_id INTEGER PRIMARY KEY, doc_seq INTEGER NOT NULL, start INTEGER NOT NULL,
    stop INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def corpora_root(config) -> Path:
    return config.home_path / "corpora"


def corpus_dir(config, name: str) -> Path:
    if not CORPUS_NAME.match(name or ""):
        raise CorpusError(f"corpus name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return corpora_root(config) / name


def chunk_spans(text: str, size: int = CHUNK_CHARS) -> list[tuple[int, int]]:
    """Character spans of about `size` characters, cut at whitespace so no word is split."""
    spans, start, length = [], 0, len(text)
    while start < length:
        stop = min(start + size, length)
        if stop < length:
            cut = text.rfind(" ", start + size // 2, stop)
            cut = max(cut, text.rfind("\n", start + size // 2, stop))
            stop = cut if cut > start else stop
        spans.append((start, stop))
        start = stop
    return spans or [(0, 0)]


# ---------------------------------------------------------------------------------------------- reading


class Corpus:
    """A finished local corpus, read-only. Safe to share between threads (agents run tools concurrently)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        info_path = self.directory / "info.json"
        if not info_path.exists():
            raise CorpusError(f"{self.directory} holds no finished corpus (no info.json): rerun the ingest "
                              "(`tasksynth search corpus add`) to finish it")
        self.info = CorpusInfo(**json.loads(info_path.read_text()))
        self._db = sqlite3.connect(f"file:{self.directory / 'docs.sqlite'}?mode=ro", uri=True,
                                   check_same_thread=False)
        self._lock = threading.Lock()
        self._shards = load_shards(self.directory / "index")

    def __repr__(self) -> str:
        return f"Corpus({self.info.name!r}, {self.info.documents} documents)"

    def close(self) -> None:
        self._db.close()

    def _query(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        """The best `k` documents for `query` (BM25 over passages; a document appears once, with its best
        passage as the snippet)."""
        k = max(1, int(k))
        hits: list[SearchHit] = []
        seen: set[int] = set()
        pool = k * 4
        while True:
            ranked = search_shards(self._shards, query, pool)
            ids = [chunk_id for chunk_id, _ in ranked]
            rows = {row[0]: row[1:] for i in range(0, len(ids), 900) for row in self._query(
                "SELECT c.chunk_id, d.seq, d.doc_id, d.title, d.url, substr(d.text, c.start + 1, c.stop - c.start) "
                "FROM chunks c JOIN documents d ON d.seq = c.doc_seq "
                f"WHERE c.chunk_id IN ({','.join('?' * len(ids[i:i + 900]))})", tuple(ids[i:i + 900]))}
            for chunk_id, score in ranked:
                row = rows.get(chunk_id)
                if row is None or row[0] in seen:
                    continue
                seq, doc_id, title, url, passage = row
                seen.add(seq)
                hits.append(SearchHit(doc_id=doc_id, title=title, snippet=snippet(passage, query), score=score,
                                      url=url))
                if len(hits) == k:
                    return hits
            if len(ranked) < pool or pool >= 50 * k:
                return hits
            hits.clear()
            seen.clear()
            pool *= 4

    def document(self, doc_id: str) -> Document:
        rows = self._query("SELECT doc_id, title, text, url, links, attributes FROM documents WHERE doc_id = ?",
                           (doc_id,))
        if not rows:
            raise CorpusError(f"no document {doc_id!r} in corpus {self.info.name!r}")
        doc_id, title, text, url, links, attributes = rows[0]
        return Document(doc_id=doc_id, title=title, text=text, url=url, links=json.loads(links),
                        attributes=json.loads(attributes))

    def open(self, doc_id: str, page: int = 0) -> DocumentPage:
        """Page `page` (from 0) of a document's text, `PAGE_CHARS` characters a page, cut at whitespace."""
        doc = self.document(doc_id)
        spans = chunk_spans(doc.text, PAGE_CHARS)
        if not 0 <= page < len(spans):
            raise CorpusError(f"document {doc_id!r} has {len(spans)} page(s) (0..{len(spans) - 1}); "
                              f"page {page} does not exist")
        start, stop = spans[page]
        return DocumentPage(doc_id=doc.doc_id, title=doc.title, url=doc.url, text=doc.text[start:stop].strip(),
                            page=page, pages=len(spans), links=doc.links, attributes=doc.attributes)

    def documents(self) -> Iterator[Document]:
        """Every document in ingest order, streamed (a separate read connection, so searches can run meanwhile)."""
        db = sqlite3.connect(f"file:{self.directory / 'docs.sqlite'}?mode=ro", uri=True)
        try:
            for doc_id, title, text, url, links, attributes in db.execute(
                    "SELECT doc_id, title, text, url, links, attributes FROM documents ORDER BY seq"):
                yield Document(doc_id=doc_id, title=title, text=text, url=url, links=json.loads(links),
                               attributes=json.loads(attributes))
        finally:
            db.close()

    def mentions(self, phrase: str) -> int:
        """How many documents mention `phrase` (case-insensitive, as words; used to rank entities toward the
        long tail). Exact for phrases whose words meet in at most `MENTION_CHECK_LIMIT` passages; above that,
        the number of documents having all its words in one passage."""
        tokens = query_tokens(phrase)
        if not tokens:
            return 0
        import numpy as np

        candidates = np.concatenate([s.chunks_with_all(tokens) for s in self._shards] or [np.empty(0, int)])
        check = candidates.size <= MENTION_CHECK_LIMIT
        pattern = re.compile(r"(?<!\w)" + r"\W+".join(map(re.escape, phrase.split())) + r"(?!\w)", re.IGNORECASE)
        found: set[int] = set()
        ids = candidates.tolist()
        for i in range(0, len(ids), 900):
            part = ids[i:i + 900]
            for seq, title, passage in self._query(
                    "SELECT d.seq, d.title, CASE WHEN ? THEN substr(d.text, c.start + 1, c.stop - c.start) "
                    "ELSE '' END FROM chunks c JOIN documents d ON d.seq = c.doc_seq "
                    f"WHERE c.chunk_id IN ({','.join('?' * len(part))})", (check, *part)):
                if not check or pattern.search(passage) or pattern.search(title):
                    found.add(seq)
        return len(found)


def snippet(passage: str, query: str, size: int = SNIPPET_CHARS) -> str:
    """About `size` characters of `passage` around the first query word found in it, on one line."""
    flat = " ".join(passage.split())
    if len(flat) <= size:
        return flat
    lowered = flat.lower()
    positions = [p for p in (lowered.find(t) for t in query_tokens(query)) if p >= 0]
    center = min(positions) if positions else 0
    start = max(0, min(center - size // 3, len(flat) - size))
    start = flat.rfind(" ", 0, start) + 1 if start else 0
    text = flat[start:start + size].rsplit(" ", 1)[0] if start + size < len(flat) else flat[start:]
    return ("..." if start else "") + text + ("..." if start + size < len(flat) else "")


# ---------------------------------------------------------------------------------------------- ingest


class _Progress:
    """One line on stderr every few seconds: documents, megabytes and rates so far."""

    def __init__(self, name: str, enabled: bool | Callable[[str], None]):
        self.name, self.started, self.last = name, time.monotonic(), 0.0
        self.emit = enabled if callable(enabled) else (lambda line: print(line, file=sys.stderr, flush=True)) \
            if enabled else None

    def __call__(self, phase: str, done: int, chars: int = 0, total: int = 0, force: bool = False) -> None:
        now = time.monotonic()
        if self.emit is None or (not force and now - self.last < 2.0):
            return
        self.last = now
        elapsed = max(now - self.started, 1e-9)
        of = f"/{total:,}" if total else ""
        size = f", {chars / 1e6:,.1f} MB" if chars else ""
        self.emit(f"{self.name}: {phase} {done:,}{of}{size} ({done / elapsed:,.0f}/s)")


def _connect(directory: Path) -> sqlite3.Connection:
    db = sqlite3.connect(directory / "docs.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def _state(db: sqlite3.Connection, key: str, default: str = "") -> str:
    row = db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return row[0] if row else default


def _set_state(db: sqlite3.Connection, key: str, value) -> None:
    db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (key, str(value)))


def ingest(config, name: str, source: Source, *, progress: bool | Callable[[str], None] = True,
           shard_chars: int = SHARD_CHARS, batch: int = BATCH_DOCUMENTS) -> CorpusInfo:
    """Ingest `source` as corpus `name` and return its identity. Resumes an interrupted ingest of the same
    source; a finished corpus of the same source is returned as it is; another source under a taken name is
    an error (remove the corpus first)."""
    directory = corpus_dir(config, name)
    described = source.describe()
    info_path = directory / "info.json"
    if info_path.exists():
        info = CorpusInfo(**json.loads(info_path.read_text()))
        if info.source != described:
            raise CorpusError(f"corpus {name!r} already exists from {info.source}; remove it first "
                              f"(`tasksynth search corpus remove {name}`)")
        return info
    directory.mkdir(parents=True, exist_ok=True)
    lock = (directory / "ingest.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise CorpusError(f"another process is ingesting corpus {name!r}; wait for it or stop it") from None
    db = _connect(directory)
    try:
        started = _state(db, "source")
        if started and started != described:
            raise CorpusError(f"an unfinished ingest of corpus {name!r} is from {started}; remove it first "
                              f"(`tasksynth search corpus remove {name}`) or rerun it with the same source")
        if not started:
            _set_state(db, "source", described)
            _set_state(db, "created_at", datetime.now(UTC).isoformat(timespec="seconds"))
        report = _Progress(name, progress)
        if _state(db, "loaded") != "1":
            _load_documents(db, source, report, batch)
        _build_index(db, directory / "index", report, shard_chars)
        info = CorpusInfo(name=name, content_hash=_content_hash(db), source=described,
                          documents=db.execute("SELECT count(*) FROM documents").fetchone()[0],
                          chunks=db.execute("SELECT count(*) FROM chunks").fetchone()[0],
                          created_at=_state(db, "created_at"))
        try:  # a finished corpus is read-only: out of WAL mode it opens from a read-only folder, without -wal/-shm
            db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:  # another connection still has it open: it stays in WAL mode, complete
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        partial = info_path.with_suffix(".partial")
        partial.write_text(json.dumps(info.to_dict(), indent=2))
        partial.replace(info_path)
    finally:
        db.close()
        lock.close()  # releases the lock; the file stays (removing it would race with a waiting ingest)
    return info


def _load_documents(db: sqlite3.Connection, source: Source, report: _Progress, batch: int) -> None:
    consumed = int(_state(db, "records", "0"))
    chars = int(_state(db, "chars", "0"))
    seq = db.execute("SELECT coalesce(max(seq), -1) + 1 FROM documents").fetchone()[0]
    chunk_id = db.execute("SELECT coalesce(max(chunk_id), -1) + 1 FROM chunks").fetchone()[0]
    pending: list[Document] = []

    def flush() -> None:
        nonlocal seq, chunk_id, consumed, chars
        fresh: dict[str, Document] = {}
        for doc in pending:  # a repeated id keeps its first document
            fresh.setdefault(doc.doc_id, doc)
        first = seq
        rows = [(first + i, doc.doc_id, doc.title, doc.url, doc.text,
                 json.dumps(doc.links, ensure_ascii=False) if doc.links else "[]",
                 json.dumps(doc.attributes, ensure_ascii=False) if doc.attributes else "{}", doc.content_hash())
                for i, doc in enumerate(fresh.values())]
        db.execute("BEGIN")
        inserted = db.executemany("INSERT OR IGNORE INTO documents VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows).rowcount
        kept = range(first, first + len(rows))
        if inserted != len(rows):  # ids stored by an earlier batch: only the new rows get passages
            kept = {r[0] for r in db.execute("SELECT seq FROM documents WHERE seq BETWEEN ? AND ?",
                                             (first, first + len(rows) - 1))}
        chunks = []
        for row in rows:
            if row[0] in kept:
                for start, stop in chunk_spans(row[4]):
                    chunks.append((chunk_id, row[0], start, stop))
                    chunk_id += 1
                chars += len(row[4])
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?)", chunks)
        seq = first + len(rows)
        consumed += len(pending)
        _set_state(db, "records", consumed)
        _set_state(db, "chars", chars)
        db.execute("COMMIT")
        pending.clear()
        report("documents", consumed, chars)

    for doc in source.documents(skip=consumed):
        pending.append(doc)
        if len(pending) >= batch:
            flush()
    flush()
    _set_state(db, "loaded", "1")
    report("documents", consumed, chars, force=True)


def _build_index(db: sqlite3.Connection, index_dir: Path, report: _Progress, shard_chars: int) -> None:
    index_dir.mkdir(exist_ok=True)
    total = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
    built = sorted(p for p in index_dir.glob("shard-*") if not p.name.endswith(".partial"))
    first = 0
    for path in built:
        span = json.loads((path / "shard.json").read_text())
        first = span["first"] + span["count"]
    number, texts, size = len(built), [], 0
    rows = db.execute("SELECT d.title, substr(d.text, c.start + 1, c.stop - c.start) FROM chunks c JOIN documents d "
                      "ON d.seq = c.doc_seq WHERE c.chunk_id >= ? ORDER BY c.chunk_id", (first,))
    for title, passage in rows:
        texts.append(f"{title}\n{passage}")
        size += len(passage) + len(title)
        if size >= shard_chars:
            build_shard(index_dir / f"shard-{number:05d}", first, texts)
            first, number, texts, size = first + len(texts), number + 1, [], 0
            report("passages indexed", first, total=total)
    if texts or number == 0:
        build_shard(index_dir / f"shard-{number:05d}", first, texts or [""])
    report("passages indexed", total, total=total, force=True)


def _content_hash(db: sqlite3.Connection) -> str:
    digest = hashlib.sha256()
    for (doc_hash,) in db.execute("SELECT doc_hash FROM documents ORDER BY doc_id"):
        digest.update(doc_hash.encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- catalogue


def list_corpora(config) -> list[CorpusInfo]:
    """Every finished corpus under the home, by name."""
    root = corpora_root(config)
    found = []
    for info_path in sorted(root.glob("*/info.json")) if root.exists() else []:
        found.append(CorpusInfo(**json.loads(info_path.read_text())))
    return found


def unfinished_corpora(config) -> list[str]:
    """Names of corpora whose ingest was interrupted (rerun the same `corpus add` to finish them)."""
    root = corpora_root(config)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not (p / "info.json").exists()) \
        if root.exists() else []


def open_corpus(config, name: str | None = None) -> Corpus:
    """The corpus `name`; with None, `search.corpus` from the config, else the only corpus there is."""
    name = name or config.search.corpus
    if not name:
        available = list_corpora(config)
        if len(available) != 1:
            names = ", ".join(i.name for i in available) or "none"
            raise CorpusError(f"name a corpus (--corpus or search.corpus in the config); available: {names}")
        name = available[0].name
    directory = corpus_dir(config, name)
    if not directory.exists():
        names = ", ".join(i.name for i in list_corpora(config)) or "none"
        raise CorpusError(f"no corpus named {name!r} (available: {names}); add one with "
                          "`tasksynth search corpus add`")
    return Corpus(directory)


def load_corpus(directory: str | Path) -> Corpus:
    """A corpus from its folder, e.g. one written by `tasksynth search corpus export` (no config needed)."""
    return Corpus(Path(directory))


def remove_corpus(config, name: str) -> None:
    directory = corpus_dir(config, name)
    if not directory.exists():
        raise CorpusError(f"no corpus named {name!r}")
    shutil.rmtree(directory)


LOADING = """# Loading this corpus

This folder is a search corpus exported by `tasksynth search corpus export` (format {version}).

    from search_synth.corpus import load_corpus
    from search_synth.tools import corpus_tools

    corpus = load_corpus("{folder}")          # this folder
    search, open_ = corpus_tools(corpus)       # the exact tools the synthesis agents used
    print(search("your question", k=5))

Files: `docs.sqlite` (documents and passages, SQLite), `index/shard-*` (BM25 shards: numpy arrays,
memory-mapped), `info.json` (name, content hash, how it was ingested), `manifest.json` (sha256 of every
file). The content hash is the `environment.content_hash` of the exported search items.
"""


def export_corpus(config, name: str, out: Path) -> Path:
    """Copy a finished corpus to `out` with a manifest and loading notes; returns the manifest's path."""
    corpus = open_corpus(config, name)
    corpus.close()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CorpusError(f"{out} exists and is not empty")
    shutil.copytree(corpus.directory, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.partial", "*-wal", "*-shm", "ingest.lock"))
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        files[path.relative_to(out).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"format": "tasksynth-search-corpus", "version": FORMAT_VERSION, "corpus": corpus.info.to_dict(),
                "load": "search_synth.corpus.load_corpus(<this folder>)", "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out / "LOADING.md").write_text(LOADING.format(version=FORMAT_VERSION, folder=out.resolve()))
    return out / "manifest.json"
