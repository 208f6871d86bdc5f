"""Local corpus benchmark: ingest rate, query latency and known-item recall@10, against `rank_bm25` (the
plain-Python BM25 most projects start from), `bm25s` (the fast numpy one; documents whole, no passages) and,
with --compare-duckdb, DuckDB's `fts` extension (documents whole).

    .venv/bin/python bench/search_index.py [--jsonl-mb 200] [--compare-duckdb] [--skip-jsonl]

Corpora:
  * the largest installed dictd database (dict-gcide when installed: `apt-get install dict-gcide`);
  * a generated JSONL of `--jsonl-mb` megabytes of real text: documents of 8-40 paragraphs drawn at random
    (seeded) from the installed dictd databases' entries, so the vocabulary and word statistics are those of
    real dictionary prose while the documents are new combinations.

Known-item recall@10: 1,000 documents drawn with a seed; from each, a run of 8 consecutive words of the body
(words of the title removed); a hit when the document is among the first 10 results. Query latency is the
p50 over those 1,000 queries (the baseline answers the first 200; it takes ~0.1-1 s a query on large corpora).
Ingest rate counts the whole `tasksynth search corpus add` work: reading, chunking, storing, indexing, hashing.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search_synth.corpus import DictdSource, JsonlSource, ingest, open_corpus  # noqa: E402
from tasksynth.config import load_config  # noqa: E402

DICTD = Path("/usr/share/dictd")
RUN = 8
QUERIES = 1000
BASELINE_QUERIES = 200


def largest_dictd() -> Path | None:
    indexes = sorted(DICTD.glob("*.index"), key=lambda p: p.with_name(p.name[:-6] + ".dict.dz").stat().st_size
                     if p.with_name(p.name[:-6] + ".dict.dz").exists() else 0)
    return indexes[-1] if indexes else None


def make_jsonl(path: Path, megabytes: int, seed: int = 7) -> int:
    """Write `megabytes` of documents made of random real dictionary entries; returns the document count."""
    paragraphs = []
    for index in sorted(DICTD.glob("*.index")):
        for doc in DictdSource(index).documents():
            paragraphs.extend(p for p in re.split(r"\n\s*\n", doc.text) if len(p) > 80)
    rng = random.Random(seed)
    target, written, count = megabytes * 1_000_000, 0, 0
    with path.open("w") as out:
        while written < target:
            body = "\n\n".join(rng.choice(paragraphs) for _ in range(rng.randint(8, 40)))
            line = json.dumps({"id": f"g{count}", "title": f"Generated document {count}", "url": "",
                               "text": body}) + "\n"
            out.write(line)
            written += len(line)
            count += 1
    return count


def known_items(corpus, seed: int = 1234) -> list[tuple[str, str]]:
    """(doc_id, query) pairs: 8 consecutive body words of 1,000 seeded documents, title words removed."""
    docs = []
    for doc in corpus.documents():
        words = body_words(doc)
        if len(words) >= RUN + 4:
            docs.append((doc.doc_id, words))
    rng = random.Random(seed)
    pairs = []
    for doc_id, words in rng.sample(docs, min(QUERIES, len(docs))):
        start = rng.randrange(0, len(words) - RUN + 1)
        pairs.append((doc_id, " ".join(words[start:start + RUN])))
    return pairs


def body_words(doc) -> list[str]:
    title_words = {w.lower() for w in re.findall(r"\w+", doc.title)}
    return [w for w in re.findall(r"\w+", doc.text) if w.lower() not in title_words]


def holds_run(corpus, doc_id: str, query: str) -> bool:
    """Whether the document holds the query's 8-word run too: in the generated corpus a dictionary paragraph
    appears in about five documents, so a run can have several right answers."""
    words = body_words(corpus.document(doc_id))
    run = query.split()
    return any(words[i:i + RUN] == run for i in range(len(words) - RUN + 1))


def relaxed_recall(corpus, pairs, results) -> float:
    """Recall@10 when any document holding the run counts as found."""
    found = 0
    for (doc_id, query), top in zip(pairs, results):
        found += doc_id in top or any(holds_run(corpus, other, query) for other in top)
    return found / len(results)


def measure_ours(config, name: str, source, chars_hint: int | None = None) -> dict:
    started = time.perf_counter()
    info = ingest(config, name, source, progress=lambda line: print("  " + line, file=sys.stderr))
    seconds = time.perf_counter() - started
    corpus = open_corpus(config, name)
    chars = sum(len(d.text.encode()) for d in corpus.documents()) if chars_hint is None else chars_hint
    pairs = known_items(corpus)
    latencies, found, results = [], 0, []
    corpus.search("warm up the index", 10)
    for doc_id, query in pairs:
        t = time.perf_counter()
        hits = corpus.search(query, 10)
        latencies.append(time.perf_counter() - t)
        found += any(h.doc_id == doc_id for h in hits)
        results.append([h.doc_id for h in hits])
    return {"corpus": name, "documents": info.documents, "MB": chars / 1e6, "ingest_s": seconds,
            "docs_per_s": info.documents / seconds, "MB_per_s": chars / 1e6 / seconds,
            "p50_ms": statistics.median(latencies) * 1000, "recall@10": found / len(pairs), "queries": len(pairs),
            "relaxed": relaxed_recall(corpus, pairs, results), "pairs": pairs, "corpus_obj": corpus}


def measure_rank_bm25(corpus, pairs) -> dict:
    try:
        from rank_bm25 import BM25Okapi
    except ImportError:
        return {"error": "rank_bm25 is not installed: pip install rank-bm25 (or the `bench` extra)"}
    from search_synth.corpus.bm25 import query_tokens

    started = time.perf_counter()
    ids, tokenized = [], []
    for doc in corpus.documents():
        ids.append(doc.doc_id)
        tokenized.append(query_tokens(f"{doc.title}\n{doc.text}"))
    bm25 = BM25Okapi(tokenized)
    seconds = time.perf_counter() - started
    latencies, found, results = [], 0, []
    for doc_id, query in pairs[:BASELINE_QUERIES]:
        t = time.perf_counter()
        top = bm25.get_top_n(query_tokens(query), ids, n=10)
        latencies.append(time.perf_counter() - t)
        found += doc_id in top
        results.append(top)
    return {"index_s": seconds, "docs_per_s": len(ids) / seconds, "p50_ms": statistics.median(latencies) * 1000,
            "recall@10": found / len(results), "queries": len(results),
            "relaxed": relaxed_recall(corpus, pairs, results)}


def measure_bm25s(corpus, pairs) -> dict:
    try:
        import bm25s
    except ImportError:
        return {"error": "bm25s is not installed: pip install bm25s (or the `bench` extra)"}
    started = time.perf_counter()
    ids, texts = [], []
    for doc in corpus.documents():
        ids.append(doc.doc_id)
        texts.append(f"{doc.title}\n{doc.text}")
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    seconds = time.perf_counter() - started
    del texts
    latencies, found, results = [], 0, []
    for doc_id, query in pairs:
        t = time.perf_counter()
        tokens = [w for w in bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
                  if w in retriever.vocab_dict]
        rows, _ = retriever.retrieve([tokens], k=10, show_progress=False, n_threads=1) if tokens else ([[]], None)
        latencies.append(time.perf_counter() - t)
        top = [ids[int(i)] for i in rows[0]]
        found += doc_id in top
        results.append(top)
    return {"index_s": seconds, "docs_per_s": len(ids) / seconds, "p50_ms": statistics.median(latencies) * 1000,
            "recall@10": found / len(pairs), "queries": len(pairs), "relaxed": relaxed_recall(corpus, pairs, results)}


def measure_duckdb_fts(corpus, pairs, folder: Path) -> dict:
    import duckdb

    db = duckdb.connect(str(folder / "fts.duckdb"))
    db.execute("LOAD fts")
    db.execute("CREATE TABLE docs (doc_id VARCHAR, title VARCHAR, text VARCHAR)")
    started = time.perf_counter()
    import pyarrow as pa

    rows = [(d.doc_id, d.title, d.text) for d in corpus.documents()]
    db.register("incoming", pa.table({"doc_id": [r[0] for r in rows], "title": [r[1] for r in rows],
                                      "text": [r[2] for r in rows]}))
    db.execute("INSERT INTO docs SELECT * FROM incoming")
    db.execute("PRAGMA create_fts_index('docs', 'doc_id', 'title', 'text', stopwords='english')")
    seconds = time.perf_counter() - started
    latencies, found, results = [], 0, []
    sql = ("SELECT doc_id FROM (SELECT doc_id, fts_main_docs.match_bm25(doc_id, ?) AS score FROM docs) "
           "WHERE score IS NOT NULL ORDER BY score DESC LIMIT 10")
    for doc_id, query in pairs[:BASELINE_QUERIES]:
        t = time.perf_counter()
        top = [r[0] for r in db.execute(sql, [query]).fetchall()]
        latencies.append(time.perf_counter() - t)
        found += doc_id in top
        results.append(top)
    db.close()
    return {"index_s": seconds, "docs_per_s": len(rows) / seconds, "p50_ms": statistics.median(latencies) * 1000,
            "recall@10": found / len(results), "queries": len(results),
            "relaxed": relaxed_recall(corpus, pairs, results)}


def report(ours: dict, baseline: dict, label: str) -> None:
    print(f"\n## {ours['corpus']}: {ours['documents']:,} documents, {ours['MB']:.1f} MB of text")
    print(f"ours (numpy BM25 shards): ingest {ours['ingest_s']:.1f} s = {ours['docs_per_s']:,.0f} docs/s, "
          f"{ours['MB_per_s']:.2f} MB/s; query p50 {ours['p50_ms']:.2f} ms; recall@10 {ours['recall@10']:.3f}, "
          f"any document holding the run {ours['relaxed']:.3f} ({ours['queries']} queries)")
    if "error" in baseline:
        print(f"{label}: {baseline['error']}")
        return
    print(f"{label}: index {baseline['index_s']:.1f} s = {baseline['docs_per_s']:,.0f} docs/s; query p50 "
          f"{baseline['p50_ms']:.2f} ms; recall@10 {baseline['recall@10']:.3f}, any document holding the run "
          f"{baseline['relaxed']:.3f} ({baseline['queries']} queries)")
    speed = baseline["p50_ms"] / ours["p50_ms"]
    print(f"ratio ours/{label}: ingest rate x{ours['docs_per_s'] / baseline['docs_per_s']:.2f}, query p50 "
          + (f"x{speed:.1f} faster" if speed >= 1 else f"x{1 / speed:.1f} slower"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jsonl-mb", type=int, default=200, help="size of the generated JSONL (1000 for 1 GB)")
    parser.add_argument("--skip-jsonl", action="store_true", help="only the dictd corpus")
    parser.add_argument("--skip-dictd", action="store_true", help="only the generated JSONL")
    parser.add_argument("--compare-duckdb", action="store_true", help="also measure DuckDB fts on the dictd corpus")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip rank_bm25 and bm25s (they hold every token in memory: several GB at 1 GB)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        os.environ["TASKSYNTH_HOME"] = tmp
        config = load_config()
        index = None if args.skip_dictd else largest_dictd()
        if args.skip_dictd:
            pass
        elif index is None:
            print("no dictd database under /usr/share/dictd: apt-get install dict-gcide", file=sys.stderr)
        else:
            print(f"# dictd: {index}", file=sys.stderr)
            ours = measure_ours(config, index.name[:-6], DictdSource(index))
            baseline = ({"error": "skipped"} if args.no_baseline
                        else measure_rank_bm25(ours["corpus_obj"], ours["pairs"]))
            report(ours, baseline, "rank_bm25")
            if not args.no_baseline:
                report(ours, measure_bm25s(ours["corpus_obj"], ours["pairs"]), "bm25s")
            if args.compare_duckdb:
                report(ours, measure_duckdb_fts(ours["corpus_obj"], ours["pairs"], Path(tmp)), "duckdb-fts")
        if not args.skip_jsonl:
            path = Path(tmp) / "generated.jsonl"
            started = time.perf_counter()
            count = make_jsonl(path, args.jsonl_mb)
            print(f"# generated {path.stat().st_size / 1e6:.0f} MB JSONL, {count:,} documents, in "
                  f"{time.perf_counter() - started:.0f} s", file=sys.stderr)
            ours = measure_ours(config, f"generated-{args.jsonl_mb}mb", JsonlSource(path))
            baseline = ({"error": "skipped"} if args.no_baseline
                        else measure_rank_bm25(ours["corpus_obj"], ours["pairs"]))
            report(ours, baseline, "rank_bm25")
            if not args.no_baseline:
                report(ours, measure_bm25s(ours["corpus_obj"], ours["pairs"]), "bm25s")


if __name__ == "__main__":
    main()
