"""What a corpus is made of, as the agents and the pipeline see it: documents, hits, pages, the corpus identity."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from tasksynth.errors import TasksynthError


class CorpusError(TasksynthError):
    """A corpus cannot be ingested, found or read (unknown name, unknown document id, page out of range, bad
    source file)."""


@dataclass
class Document:
    """One entry of a corpus: an article, a dictionary entry, a web page, a place.

    `links` are the ids of other documents of the same corpus that this one refers to (dictionary `{word}`
    cross-references, HTML anchors); `attributes` are checkable facts (population, country, IATA code...)."""

    doc_id: str
    title: str
    text: str
    url: str = ""
    links: list[str] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def content_hash(self) -> str:
        """sha256 of everything a reader of this document sees; the corpus hash is built from these."""
        # ASCII separators that do not occur in text keep fields apart without the cost of a JSON dump
        attributes = "\x1f".join(f"{k}\x1d{v}" for k, v in sorted(self.attributes.items()))
        payload = "\x1e".join((self.doc_id, self.title, self.url, self.text, "\x1f".join(self.links), attributes))
        return hashlib.sha256(payload.encode(errors="surrogatepass")).hexdigest()


@dataclass
class SearchHit:
    """One search result: the best passage of a document for the query."""

    doc_id: str
    title: str
    snippet: str
    score: float
    url: str = ""


@dataclass
class DocumentPage:
    """One page of a document's text (`page` counts from 0; `pages` is how many there are)."""

    doc_id: str
    title: str
    url: str
    text: str
    page: int
    pages: int
    links: list[str]
    attributes: dict[str, str]


@dataclass
class CorpusInfo:
    """The identity of an ingested corpus: what the export's `environment` column names.

    `source` says how it was ingested (kind, path or packages, options), `content_hash` is a sha256 over the
    sorted per-document hashes, so the same documents give the same hash whatever the batch boundaries or
    interruptions of the ingest were."""

    name: str
    content_hash: str
    source: str
    documents: int
    chunks: int
    created_at: str

    def to_dict(self) -> dict:
        return asdict(self)


def corpus_environment(info: CorpusInfo) -> dict:
    """The `environment` reference of an exported search item: enough to find or rebuild the same corpus."""
    return {"kind": "search_corpus", "corpus": info.name, "content_hash": info.content_hash,
            "source": info.source, "documents": info.documents, "chunks": info.chunks}
