"""Build a small local corpus inside a test: the documents go through a JSONL file and the real ingest."""

from __future__ import annotations

import json
from pathlib import Path

from search_synth.corpus import Corpus, Document, JsonlSource, ingest, open_corpus


def write_jsonl(path: Path, documents: list[Document]) -> Path:
    with path.open("w") as handle:
        for doc in documents:
            handle.write(json.dumps({"id": doc.doc_id, "title": doc.title, "url": doc.url, "text": doc.text,
                                     "links": doc.links, "attributes": doc.attributes}) + "\n")
    return path


def make_corpus(config, name: str, documents: list[Document]) -> Corpus:
    """Ingest `documents` as corpus `name` under `config`'s home and open it."""
    folder = config.home_path / "fixtures"
    folder.mkdir(parents=True, exist_ok=True)
    ingest(config, name, JsonlSource(write_jsonl(folder / f"{name}.jsonl", documents)), progress=False)
    return open_corpus(config, name)
