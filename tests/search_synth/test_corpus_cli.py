"""`tasksynth search corpus ...`, `search query`, `search open` as a user runs them, and an ingest killed with
SIGKILL that resumes to the same corpus."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from search_synth.corpus import Document, JsonlSource, ingest
from search_synth.tools import corpus_tools
from tests.search_synth.corpus_fixtures import write_jsonl


def _docs(n: int) -> list[Document]:
    words = ("river stone lantern copper meadow falcon orchard harbour glacier thimble saffron quarry "
             "beacon walnut ember prism").split()
    return [Document(f"d{i}", f"Entry {i}", " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(60))
                     + f" serial{i}") for i in range(n)]


def test_add_query_open_list_export_remove(tasksynth, home, tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", [
        Document("alpha", "Alpha Centauri", "Alpha Centauri is the closest star system to the Sun.", links=["sol"]),
        Document("sol", "Sun", "The Sun is the star at the centre of the Solar System."),
    ])
    added = tasksynth("search", "corpus", "add", "stars", "--jsonl", str(source), cwd=tmp_path, check=True)
    assert "corpus stars: 2 documents" in added.stdout
    listed = tasksynth("search", "corpus", "list", cwd=tmp_path, check=True).stdout
    assert listed.startswith("stars  2 documents") and "jsonl:" in listed

    shown = tasksynth("search", "query", "closest star", "-k", "1", cwd=tmp_path, check=True).stdout
    from search_synth.corpus import load_corpus

    corpus = load_corpus(home / "corpora" / "stars")
    search, _ = corpus_tools(corpus)
    assert shown.strip() == search("closest star", 1)  # exactly what the agent sees
    page = json.loads(tasksynth("search", "open", "alpha", "--corpus", "stars", "--json", cwd=tmp_path,
                                check=True).stdout)
    assert page["links"] == ["sol"] and page["text"] == corpus.open("alpha").text
    missing = tasksynth("search", "open", "nope", cwd=tmp_path)
    assert missing.returncode == 1 and "error: no document 'nope' in corpus 'stars'" in missing.stderr

    exported = tasksynth("search", "corpus", "export", "stars", str(tmp_path / "out"), cwd=tmp_path, check=True)
    assert "LOADING.md" in exported.stdout and (tmp_path / "out" / "manifest.json").exists()
    tasksynth("search", "corpus", "remove", "stars", cwd=tmp_path, check=True)
    assert "no corpora" in tasksynth("search", "corpus", "list", cwd=tmp_path, check=True).stdout


def test_ingest_killed_mid_way_resumes_to_the_same_corpus(config, home, tmp_path):
    source = write_jsonl(tmp_path / "many.jsonl", _docs(30_000))
    script = ("import sys; from tasksynth.config import load_config; from search_synth.corpus import JsonlSource, "
              "ingest; ingest(load_config(), 'big', JsonlSource(__import__('pathlib').Path(sys.argv[1])), "
              "progress=False, batch=200)")
    child = subprocess.Popen([sys.executable, "-c", script, str(source)], env=dict(os.environ))
    state = home / "corpora" / "big" / "docs.sqlite"
    deadline, consumed = time.monotonic() + 60, 0
    while time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
        if state.exists():
            try:
                with closing(sqlite3.connect(state, timeout=0.1)) as db:
                    row = db.execute("SELECT value FROM state WHERE key = 'records'").fetchone()
                consumed = int(row[0]) if row else 0
            except sqlite3.OperationalError:
                continue
            if consumed >= 2000:
                break
    if child.poll() is not None:
        pytest.fail("the ingest finished before it could be killed; make the fixture larger")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert 0 < consumed < 30_000 and not (home / "corpora" / "big" / "info.json").exists()

    resumed = ingest(config, "big", JsonlSource(source), progress=False)
    fresh = ingest(config, "fresh", JsonlSource(source), progress=False)
    assert (resumed.documents, resumed.chunks, resumed.content_hash) == (30_000, fresh.chunks, fresh.content_hash)
    with closing(sqlite3.connect(home / "corpora" / "big" / "docs.sqlite")) as db:
        assert db.execute("SELECT count(DISTINCT doc_id), count(*) FROM documents").fetchone() == (30_000, 30_000)
