"""Web search clients against our own servers on 127.0.0.1 speaking the SearXNG and Brave JSON shapes, and
fetch_page's guard: model-chosen URLs never reach loopback or private addresses unless configured."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from search_synth.tools import search_tools
from search_synth.web import WebError, WebHttp, WebSearch, check_url, fetch_page
from search_synth.web.guard import why_not_public

ARTICLE = ("<html><head><title>The Lighthouse of Alexandria</title></head><body><nav>Home | About</nav>"
           "<article><h1>The Lighthouse of Alexandria</h1><p>The lighthouse was built by the Ptolemaic Kingdom "
           "on the island of Pharos. It stood for well over a thousand years and was damaged by earthquakes "
           "between 956 and 1323.</p><p>Its height is estimated at about one hundred metres, which made it "
           "one of the tallest man-made structures of the ancient world.</p></article></body></html>")


class Server:
    """A loopback HTTP server whose routes are functions of (path, query, headers) -> (status, headers, body)."""

    def __init__(self, routes):
        self.requests: list[tuple[str, dict]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                parts = urlsplit(self.path)
                owner.requests.append((parts.path, dict(self.headers)))
                status, headers, body = routes(parts.path, parse_qs(parts.query), self.headers)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def pages():
    secret = Server(lambda path, query, headers: (200, {"Content-Type": "text/plain"}, b"internal secret"))

    def routes(path, query, headers):
        if path == "/article":
            return 200, {"Content-Type": "text/html; charset=utf-8"}, ARTICLE.encode()
        if path == "/moved":
            return 301, {"Location": "/article"}, b""
        if path == "/to-internal":
            return 302, {"Location": f"{secret.url}/admin"}, b""
        if path == "/big":
            return 200, {"Content-Type": "text/plain"}, b"word " * 100_000
        if path == "/image":
            return 200, {"Content-Type": "image/png"}, b"\x89PNG"
        return 404, {}, b"not found"

    server = Server(routes)
    yield server, secret
    server.close()
    secret.close()


@pytest.fixture
def web_config(config, tmp_path):
    config.search.rate_limit_per_s = 0
    config.search.backoff_s = 0.01
    config.search.cache = str(tmp_path / "cache")
    return config


def test_guard_classifies_addresses_and_schemes():
    assert why_not_public("127.0.0.1") == "loopback" and why_not_public("::1") == "loopback"
    assert why_not_public("169.254.169.254") == "link-local" and why_not_public("10.1.2.3") == "private"
    assert why_not_public("::ffff:192.168.1.1") == "private" and why_not_public("8.8.8.8") == ""
    with pytest.raises(WebError, match="only http and https"):
        check_url("file:///etc/passwd")
    with pytest.raises(WebError, match="169.254.169.254, a link-local address"):
        check_url("http://metadata.internal/latest", resolve=lambda host, port: ["169.254.169.254"])
    check_url("https://example.org/", resolve=lambda host, port: ["93.184.216.34"])  # public: allowed


def test_fetch_page_reads_html_and_follows_checked_redirects(web_config, pages):
    server, _ = pages
    web_config.search.allow_hosts = [server.host]
    http = WebHttp(web_config)
    page = fetch_page(f"{server.url}/moved", http)
    assert page.url == f"{server.url}/article" and page.title == "The Lighthouse of Alexandria"
    assert "island of Pharos" in page.text and "one hundred metres" in page.text
    served = len(server.requests)
    assert fetch_page(f"{server.url}/moved", http).text == page.text
    assert len(server.requests) == served  # second read from the on-disk cache
    web_config.search.max_page_bytes = 10_000
    big = fetch_page(f"{server.url}/big", WebHttp(web_config))
    assert big.truncated and 9_000 < len(big.text) <= 10_000  # cut at the byte cap (the page is 500 kB)
    with pytest.raises(WebError, match="is image/png, not a text page"):
        fetch_page(f"{server.url}/image", http)


def test_redirect_to_loopback_is_refused_unless_allowed(web_config, pages):
    server, secret = pages
    web_config.search.allow_hosts = [server.host]  # the page server only, as a public host would be
    with pytest.raises(WebError, match=r"refused 'http://127\.0\.0\.1:\d+/admin': 127\.0\.0\.1 resolves to "
                                       r"127\.0\.0\.1, a loopback address"):
        fetch_page(f"{server.url}/to-internal", WebHttp(web_config))
    assert secret.requests == []  # never reached
    with pytest.raises(WebError, match="a loopback address"):
        fetch_page(f"{secret.url}/admin", WebHttp(web_config))
    web_config.search.allow_private_hosts = True
    web_config.search.cache = "off"
    assert fetch_page(f"{server.url}/to-internal", WebHttp(web_config)).text == "internal secret"


def test_searxng_json_results_retry_and_cache(web_config):
    calls = {"n": 0}

    def routes(path, query, headers):
        calls["n"] += 1
        if calls["n"] == 1:
            return 503, {}, b"busy"
        assert path == "/search" and query["format"] == ["json"]
        body = {"query": query["q"][0], "number_of_results": 0, "answers": [], "corrections": [], "infoboxes": [],
                "suggestions": [], "unresponsive_engines": [],
                "results": [{"url": "https://en.wikipedia.org/wiki/Pharos", "title": "Pharos - <b>Wikipedia</b>",
                             "content": "Pharos was a small island in Alexandria.", "engine": "wikipedia",
                             "engines": ["wikipedia"], "positions": [1], "score": 1.0, "category": "general",
                             "parsed_url": ["https", "en.wikipedia.org", "/wiki/Pharos", "", "", ""]},
                            {"url": "https://example.org/lighthouse", "title": "Lighthouse facts",
                             "content": "About one hundred metres tall.", "engine": "duckduckgo",
                             "engines": ["duckduckgo"], "positions": [2], "score": 0.5, "category": "general"}]}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    server = Server(routes)
    try:
        web_config.search.backend, web_config.search.url = "searxng", server.url
        web = WebSearch(web_config)
        hits = web.search("pharos lighthouse", k=5)
        assert [h.doc_id for h in hits] == ["https://en.wikipedia.org/wiki/Pharos", "https://example.org/lighthouse"]
        assert hits[0].title == "Pharos - Wikipedia" and hits[0].score > hits[1].score
        assert calls["n"] == 2  # the 503 was retried
        assert web.search("pharos lighthouse", k=5) == hits and calls["n"] == 2  # cached
        search, _ = search_tools(web_config)
        assert "id: https://en.wikipedia.org/wiki/Pharos" in search("pharos lighthouse", 2)
    finally:
        server.close()


def test_brave_api_key_sent_in_header_and_never_stored(web_config, pages, monkeypatch, tmp_path):
    monkeypatch.setenv("BRAVE_TEST_KEY", "sk-brave-very-secret")
    article, _ = pages

    def routes(path, query, headers):
        if headers.get("X-Subscription-Token") != "sk-brave-very-secret":
            return 401, {"Content-Type": "application/json"}, b'{"error": "bad key"}'
        body = {"type": "search", "query": {"original": query["q"][0]},
                "web": {"type": "search", "results": [
                    {"title": "Lighthouse of <strong>Alexandria</strong>", "url": f"{article.url}/article",
                     "description": "One of the Seven Wonders.", "language": "en", "family_friendly": True}]}}
        assert query["count"] == ["3"]
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    server = Server(routes)
    try:
        web_config.search.backend, web_config.search.url = "brave", server.url
        web_config.search.api_key_env = "BRAVE_TEST_KEY"
        web_config.search.allow_hosts = [article.host]
        search, open_ = search_tools(web_config)
        text = search("alexandria lighthouse", 3)
        assert "Lighthouse of Alexandria" in text and f"id: {article.url}/article" in text
        assert "island of Pharos" in open_(f"{article.url}/article")
        assert open_(f"{server.url}/x").startswith("Error: refused")  # the API host is no page host
        cached = " ".join(p.read_text() for p in (tmp_path / "cache").rglob("*.json"))
        assert cached and "sk-brave-very-secret" not in cached
        monkeypatch.setenv("BRAVE_TEST_KEY", "wrong")
        with pytest.raises(WebError) as failed:
            WebSearch(web_config).search("another query", 3)
        assert "401" in str(failed.value) and "wrong" not in str(failed.value)
        monkeypatch.delenv("BRAVE_TEST_KEY")
        with pytest.raises(WebError, match="needs an API key in the environment variable"):
            WebSearch(web_config)
    finally:
        server.close()
