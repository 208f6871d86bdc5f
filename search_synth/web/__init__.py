"""Web search for the agents over `httpx`: a SearXNG JSON endpoint or the Brave Search API, and `fetch_page(url)`
turning a page into readable text (trafilatura). Timeouts, retries with backoff, a per-host rate limit, size
caps and an on-disk cache (`<home>/web-cache`) come from the `[search]` config; model-chosen URLs go through
the guard (`guard.py`) on every redirect hop.

    from search_synth.web import WebSearch
    web = WebSearch(config)           # search.backend = "searxng" | "brave"
    web.search("query", k=5)          # -> [SearchHit(doc_id=url, title, snippet, score, url)]
    web.open(url, page=0)             # -> DocumentPage of the fetched page's text
    web.fetch_page(url)               # -> WebPage(url, title, text, truncated)

`search_synth.tools.search_tools(config)` gives the agents `search` and `open` over the configured backend.
"""

from search_synth.web.errors import WebError
from search_synth.web.guard import check_url
from search_synth.web.http import WebHttp
from search_synth.web.search import WebPage, WebSearch, fetch_page

__all__ = ["WebError", "WebHttp", "WebPage", "WebSearch", "check_url", "fetch_page"]
