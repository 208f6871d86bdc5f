"""Web search backends and page reading, returning the same `SearchHit` / `DocumentPage` as a local corpus, so
the agents' tools and their text are the same whichever backend answers (the document id of a web hit is its
URL).

Backends (`search.backend`): `searxng` (a SearXNG instance's JSON API: `GET {url}/search?q=..&format=json`,
the instance must enable the json format) and `brave` (Brave Search API: `GET
https://api.search.brave.com/res/v1/web/search`, key in the `X-Subscription-Token` header from the environment
variable named by `search.api_key_env`).
"""

from __future__ import annotations

from dataclasses import dataclass

from search_synth.corpus import DocumentPage, SearchHit
from search_synth.corpus.local import PAGE_CHARS, chunk_spans
from search_synth.corpus.sources import html_to_text
from search_synth.web.errors import WebError
from search_synth.web.http import WebHttp

BRAVE_URL = "https://api.search.brave.com/res/v1/web/search"
BRAVE_MAX_COUNT = 20
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown")


@dataclass
class WebPage:
    url: str
    title: str
    text: str
    truncated: bool


class WebSearch:
    """`search(query, k)` and `open(url, page)` over a web search backend, with `fetch_page` behind `open`."""

    def __init__(self, config, http: WebHttp | None = None):
        from tasksynth.config import secret

        self.config = config
        self.backend = config.search.backend
        if self.backend not in ("searxng", "brave"):
            raise WebError(f"search.backend is {self.backend!r}; web search needs searxng or brave")
        self.http = http or WebHttp(config)
        self.url = config.search.url.rstrip("/")
        if self.backend == "searxng" and not self.url:
            raise WebError("search.backend = searxng needs search.url (the instance's base URL)")
        self._key_env = config.search.api_key_env
        if self.backend == "brave":
            if not self._key_env or not secret(self._key_env):
                raise WebError(f"search.backend = brave needs an API key in the environment variable named by "
                               f"search.api_key_env ({self._key_env or 'not set'})")
        self.max_chars = config.search.max_page_chars

    def search(self, query: str, k: int = 10) -> list[SearchHit]:
        k = max(1, int(k))
        if self.backend == "searxng":
            data = self.http.get_json(f"{self.url}/search", params={"q": query, "format": "json"},
                                      cache_key=f"searxng {self.url} {query}")
            results = [(r.get("url", ""), r.get("title", ""), r.get("content", "")) for r in data.get("results", [])]
        else:
            from tasksynth.config import secret

            data = self.http.get_json(self.url or BRAVE_URL, params={"q": query, "count": min(k, BRAVE_MAX_COUNT)},
                                      headers={"Accept": "application/json",
                                               "X-Subscription-Token": secret(self._key_env) or ""},
                                      cache_key=f"brave {self.url or BRAVE_URL} {query} {min(k, BRAVE_MAX_COUNT)}")
            results = [(r.get("url", ""), r.get("title", ""), r.get("description", ""))
                       for r in (data.get("web") or {}).get("results", [])]
        hits, seen = [], set()
        for rank, (url, title, snippet) in enumerate(results):
            if not url or url in seen:
                continue
            seen.add(url)
            hits.append(SearchHit(doc_id=url, title=_plain(title) or url, snippet=_plain(snippet),
                                  score=round(1.0 / (rank + 1), 4), url=url))
        return hits[:k]

    def fetch_page(self, url: str) -> WebPage:
        return fetch_page(url, self.http, max_chars=self.max_chars)

    def open(self, doc_id: str, page: int = 0) -> DocumentPage:
        fetched = self.fetch_page(doc_id)
        spans = chunk_spans(fetched.text, PAGE_CHARS)
        if not 0 <= page < len(spans):
            raise WebError(f"{doc_id} has {len(spans)} page(s) (0..{len(spans) - 1}); page {page} does not exist")
        start, stop = spans[page]
        return DocumentPage(doc_id=doc_id, title=fetched.title, url=fetched.url,
                            text=fetched.text[start:stop].strip(), page=page, pages=len(spans), links=[],
                            attributes={})


def fetch_page(url: str, http: WebHttp, *, max_chars: int = 200_000) -> WebPage:
    """The readable text of a web page (trafilatura's main-text extraction for HTML), cached on disk."""
    cached = http.cached(f"page {url}")
    if cached is not None:
        return WebPage(**cached)
    fetched = http.fetch(url)
    content_type = fetched.content_type.split(";")[0].strip().lower()
    if content_type and content_type not in TEXT_TYPES:
        raise WebError(f"{fetched.url} is {content_type}, not a text page")
    raw = fetched.body.decode(_charset(fetched.content_type), errors="replace")
    if content_type in ("text/plain", "text/markdown"):
        title, text = "", raw
    else:
        title, text, _ = html_to_text(raw)
    page = WebPage(url=fetched.url, title=title or fetched.url, text=text[:max_chars],
                   truncated=fetched.truncated or len(text) > max_chars)
    http.store(f"page {url}", page.__dict__)
    return page


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            import codecs

            try:
                return codecs.lookup(value.strip('"')).name
            except LookupError:
                break
    return "utf-8"


def _plain(text: str) -> str:
    """Search APIs mark matches with <strong> or <b>: plain text for the model."""
    import re

    return " ".join(re.sub(r"<[^>]{1,20}>", "", text or "").split())
