"""The agents' search tools over a local corpus or the web, and the text they return.

`corpus_tools(corpus)` gives two plain callables, `search` and `open`, whose type hints and docstrings become
the tool schemas (agent/tools.py builds them). `corpus` is a local `Corpus` or a `search_synth.web.WebSearch`
(anything with `search(query, k)` and `open(doc_id, page)`); `search_tools(config)` picks by `search.backend`.
Their results are plain text built by `format_hits` and `format_page`; `tasksynth search query` and
`tasksynth search open` print the same text, so a person sees exactly what an agent saw. With `--json`, the
CLI prints `hits_json` / `page_json` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from search_synth.corpus import Corpus, DocumentPage, SearchHit, open_corpus
from tasksynth.errors import TasksynthError

MAX_K = 20


def format_hits(query: str, hits: list[SearchHit]) -> str:
    """Search results as the agent reads them: one numbered block per document, id first."""
    if not hits:
        return f"No results for {query!r}. Try other words: names, distinctive terms, fewer words."
    lines = [f"Results for {query!r} ({len(hits)}):"]
    for number, hit in enumerate(hits, start=1):
        lines.append(f"[{number}] {hit.title}\n    id: {hit.doc_id}\n    {hit.snippet}")
    lines.append("Read a result with open(doc_id).")
    return "\n".join(lines)


def format_page(page: DocumentPage) -> str:
    """One page of a document as the agent reads it: header, attributes, text, links, where the next page is."""
    lines = [f"# {page.title}", f"id: {page.doc_id}" + (f"  url: {page.url}" if page.url else ""),
             f"page {page.page + 1} of {page.pages}"]
    if page.attributes:
        lines.append("facts: " + "; ".join(f"{k}: {v}" for k, v in page.attributes.items()))
    lines += ["", page.text, ""]
    if page.links:
        shown = page.links[:30]
        more = f" (+{len(page.links) - len(shown)} more)" if len(page.links) > len(shown) else ""
        lines.append("links: " + ", ".join(shown) + more)
    if page.page + 1 < page.pages:
        lines.append(f"More: open({page.doc_id!r}, page={page.page + 1}).")
    return "\n".join(lines).rstrip()


def hits_json(query: str, hits: list[SearchHit]) -> dict:
    return {"query": query, "hits": [asdict(h) for h in hits]}


def page_json(page: DocumentPage) -> dict:
    return asdict(page)


def corpus_tools(corpus: Corpus) -> list[Callable[..., str]]:
    """The tools `search` and `open` over `corpus`, for an agent (errors come back as text the model can act on:
    an unknown id, a page out of range, a refused or failing URL)."""

    def search(query: str, k: int = 5) -> str:
        """Search the document collection; returns titles, ids and a snippet of the best passage of each.

        Args:
            query: Words to look for (names, distinctive terms); plain words, no operators.
            k: How many documents to return (1-20).
        """
        k = max(1, min(int(k), MAX_K))
        try:
            return format_hits(query, corpus.search(query, k))
        except TasksynthError as exc:
            return f"Error: {exc}"

    def open(doc_id: str, page: int = 0) -> str:  # noqa: A001 - the tool's name as the model sees it
        """Read a document by its id (from search results or links), one page at a time.

        Args:
            doc_id: The document id exactly as shown after "id:" in the search results or in "links:".
            page: Which page to read, from 0.
        """
        try:
            return format_page(corpus.open(doc_id, int(page)))
        except TasksynthError as exc:
            return f"Error: {exc}"

    return [search, open]


def search_tools(config, corpus_name: str | None = None) -> list[Callable[..., str]]:
    """`search` and `open` over what the config names: the local corpus (`search.backend = "local"`, the corpus
    `corpus_name`, `search.corpus` or the only one) or the web (`searxng`, `brave`)."""
    if config.search.backend == "local":
        return corpus_tools(open_corpus(config, corpus_name))
    from search_synth.web import WebSearch

    return corpus_tools(WebSearch(config))
