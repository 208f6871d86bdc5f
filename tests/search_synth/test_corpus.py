"""The local corpus as the agents and the pipeline use it: search, open, pages, links, mentions, identity."""

from __future__ import annotations

import json

import pytest

from agent.tools import as_tool
from search_synth.corpus import (CorpusError, Document, JsonlSource, corpus_environment, export_corpus, ingest,
                                 list_corpora, load_corpus, open_corpus, remove_corpus)
from search_synth.tools import corpus_tools
from tests.search_synth.corpus_fixtures import make_corpus, write_jsonl

DOCS = [
    Document("mauritius", "Mauritius", "Mauritius is an island nation in the Indian Ocean. Its capital is Port "
             "Louis. The dodo lived only on Mauritius.", url="https://example.org/mauritius", links=["port-louis"],
             attributes={"capital": "Port Louis", "population": "1,265,000"}),
    Document("port-louis", "Port Louis", "Port Louis is the capital and largest city of Mauritius, on the "
             "north-west coast. Its harbour handles most of the island's trade.", links=["mauritius"]),
    Document("dodo", "Dodo", "The dodo was a flightless bird. " + "It lived in forests and ate fallen fruit. " * 300),
    Document("kefir", "Kefir", "Kefir is a fermented milk drink made with kefir grains, from the Caucasus."),
]


@pytest.fixture
def corpus(config):
    return make_corpus(config, "islands", DOCS)


def test_search_returns_titles_snippets_ids_best_first(corpus):
    hits = corpus.search("fermented milk drink", k=3)
    assert hits[0].doc_id == "kefir" and hits[0].title == "Kefir"
    assert "fermented milk" in hits[0].snippet
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len({h.doc_id for h in corpus.search("dodo Mauritius", k=10)}) == len(corpus.search("dodo Mauritius", 10))
    assert corpus.search("zzzunknownword") == []


def test_open_pages_long_documents_and_refuses_unknown_ids(corpus):
    first = corpus.open("dodo")
    assert first.pages > 1 and first.page == 0 and first.text.startswith("The dodo was a flightless bird")
    last = corpus.open("dodo", first.pages - 1)
    assert last.text and last.text != first.text
    page = corpus.open("mauritius")
    assert page.links == ["port-louis"] and page.attributes["capital"] == "Port Louis"
    with pytest.raises(CorpusError, match="no document 'atlantis'"):
        corpus.open("atlantis")
    with pytest.raises(CorpusError, match="page 99 does not exist"):
        corpus.open("dodo", 99)


def test_documents_stream_and_mentions_count_documents(corpus):
    assert [d.doc_id for d in corpus.documents()] == [d.doc_id for d in DOCS]
    assert corpus.mentions("Port Louis") == 2
    assert corpus.mentions("dodo") == 2
    assert corpus.mentions("kefir grains") == 1
    assert corpus.mentions("Louis Port") == 0  # words present, phrase absent


def test_identity_is_the_content_whatever_the_name_and_batches(config, tmp_path, corpus):
    info = corpus.info
    assert info.documents == 4 and info.chunks >= 4 and info.source.startswith("jsonl:")
    again = ingest(config, "copy", JsonlSource(write_jsonl(tmp_path / "c.jsonl", DOCS)), progress=False, batch=1)
    assert again.content_hash == info.content_hash
    changed = [*DOCS[:3], Document("kefir", "Kefir", "Kefir is a drink.")]
    other = ingest(config, "other", JsonlSource(write_jsonl(tmp_path / "o.jsonl", changed)), progress=False)
    assert other.content_hash != info.content_hash
    env = corpus_environment(info)
    assert env == {"kind": "search_corpus", "corpus": "islands", "content_hash": info.content_hash,
                   "source": info.source, "documents": 4, "chunks": info.chunks}
    assert [i.name for i in list_corpora(config)] == ["copy", "islands", "other"]
    with pytest.raises(CorpusError, match="already exists"):
        ingest(config, "islands", JsonlSource(tmp_path / "o.jsonl"), progress=False)
    remove_corpus(config, "copy")
    assert [i.name for i in list_corpora(config)] == ["islands", "other"]
    with pytest.raises(CorpusError, match="no corpus named 'copy'"):
        open_corpus(config, "copy")
    with pytest.raises(CorpusError, match="name a corpus"):
        open_corpus(config)


def test_export_loads_with_the_same_tools(config, tmp_path, corpus):
    manifest = export_corpus(config, "islands", tmp_path / "export")
    data = json.loads(manifest.read_text())
    assert data["corpus"]["content_hash"] == corpus.info.content_hash and "docs.sqlite" in data["files"]
    import sqlite3

    with sqlite3.connect(tmp_path / "export" / "docs.sqlite") as db:  # no -wal/-shm needed: loads read-only
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    loaded = load_corpus(tmp_path / "export")
    search, open_ = corpus_tools(loaded)
    assert search("capital of Mauritius", 2) == corpus_tools(corpus)[0]("capital of Mauritius", 2)
    assert "Port Louis" in open_("port-louis")


def test_tools_have_schemas_and_answer_errors_as_text(corpus):
    search, open_ = (as_tool(t) for t in corpus_tools(corpus))
    assert search.name == "search" and open_.name == "open"
    assert search.parameters["required"] == ["query"] and search.parameters["properties"]["k"]["type"] == "integer"
    assert open_.parameters["properties"]["page"]["default"] == 0
    text = search.fn("island capital", k=2)
    assert "id: port-louis" in text or "id: mauritius" in text
    page = open_.fn("dodo", page=0)
    assert "page 1 of" in page and "More: open('dodo', page=1)" in page
    assert open_.fn("atlantis").startswith("Error: no document 'atlantis'")
    assert "No results" in search.fn("zzzunknownword")


def test_bad_jsonl_line_is_named(config, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "title": "A", "text": "fine"}\n{"id": "b", "title": "B"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: needs a non-empty 'id' and a string 'text'"):
        ingest(config, "bad", JsonlSource(path), progress=False)


def test_a_repeated_id_keeps_its_first_document(config, tmp_path):
    docs = [Document("a", "A", "first alpha"), Document("b", "B", "bravo"), Document("a", "A2", "second alpha"),
            Document("c", "C", "charlie"), Document("b", "B2", "again")]
    info = ingest(config, "dups", JsonlSource(write_jsonl(tmp_path / "d.jsonl", docs)), progress=False, batch=2)
    corpus = open_corpus(config, "dups")
    assert info.documents == 3 and info.chunks == 3
    assert [(d.doc_id, d.text) for d in corpus.documents()] == [("a", "first alpha"), ("b", "bravo"),
                                                                 ("c", "charlie")]
    assert corpus.search("second alpha", 5)[0].doc_id == "a" and corpus.search("again", 5) == []


def test_two_ingests_of_one_corpus_do_not_run_at_once(config, tmp_path):
    import fcntl

    folder = config.home_path / "corpora" / "busy"
    folder.mkdir(parents=True)
    with (folder / "ingest.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(CorpusError, match="another process is ingesting corpus 'busy'"):
            ingest(config, "busy", JsonlSource(write_jsonl(tmp_path / "b.jsonl", DOCS)), progress=False)
    assert ingest(config, "busy", JsonlSource(tmp_path / "b.jsonl"), progress=False).documents == 4


def test_bm25_top_k_is_exact_when_common_terms_are_skipped(tmp_path):
    import random

    import numpy as np

    from search_synth.corpus.bm25 import Shard, build_shard, query_tokens

    rng = random.Random(5)
    common = ["webster", "noun", "verb"]  # in most passages: looked up only for the candidates
    rare = [f"w{i}" for i in range(400)]
    texts = [" ".join(rng.choice(common) if rng.random() < 0.5 else rng.choice(rare)
                      for _ in range(rng.randint(5, 60))) for _ in range(3000)]
    build_shard(tmp_path / "shard-00000", 100, texts)
    shard = Shard.load(tmp_path / "shard-00000")
    for _ in range(50):
        query = query_tokens(" ".join(rng.sample(common, 2) + rng.sample(rare, rng.randint(1, 3))))
        columns = [shard.terms[t] for t in dict.fromkeys(query) if t in shard.terms]
        brute = np.zeros(shard.count)
        for c in columns:
            a, b = shard.indptr[c], shard.indptr[c + 1]
            np.add.at(brute, shard.rows[a:b], shard.scores[a:b])
        expected = sorted(brute[brute > 0], reverse=True)[:10]
        got = shard.search(query, 10)
        assert np.allclose([score for _, score in got], expected, rtol=1e-5)
        assert all(np.isclose(brute[i - 100], score, rtol=1e-5) for i, score in got)
