"""HTTP for web search: timeouts, retries with backoff, a per-host rate limit, a size cap, an on-disk cache,
and the URL guard on every hop of a fetch (redirects are followed here, one checked hop at a time).

API keys travel only in request headers; they are not part of cache keys, error messages or logs.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from search_synth.web.errors import WebError
from search_synth.web.guard import Resolver, check_url, system_resolver

MAX_REDIRECTS = 5
RETRY_STATUSES = {429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0
USER_AGENT = "tasksynth-search/0.1 (+https://github.com/tasksynth)"


@dataclass
class Fetched:
    url: str  # after redirects
    status: int
    content_type: str
    body: bytes
    truncated: bool


class WebHttp:
    """One client per process or agent run; thread-safe."""

    def __init__(self, config, *, resolve: Resolver = system_resolver, transport: httpx.BaseTransport | None = None):
        search = config.search
        self.timeout = search.timeout_s
        self.retries = search.retries
        self.backoff = search.backoff_s
        self.min_interval = 1.0 / search.rate_limit_per_s if search.rate_limit_per_s > 0 else 0.0
        self.max_bytes = search.max_page_bytes
        self.allow_private = search.allow_private_hosts
        self.allow_hosts = tuple(search.allow_hosts)
        self.cache_ttl = search.cache_ttl_s
        self.resolve = resolve
        cache = search.cache
        self.cache_dir = None if cache == "off" else Path(cache).expanduser() if cache else \
            config.home_path / "web-cache"
        self.client = httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=False, transport=transport,
                                   headers={"User-Agent": USER_AGENT})
        self._lock = threading.Lock()
        self._next_slot: dict[str, float] = {}

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ cache

    def _cache_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.cache_dir / digest[:2] / f"{digest}.json"

    def cached(self, key: str):
        path = self._cache_path(key)
        if path is None or not path.exists() or time.time() - path.stat().st_mtime > self.cache_ttl:
            return None
        try:
            return json.loads(path.read_text())
        except ValueError:
            return None

    def store(self, key: str, value) -> None:
        path = self._cache_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{threading.get_ident()}.partial")
        partial.write_text(json.dumps(value, ensure_ascii=False))
        partial.replace(path)

    # ------------------------------------------------------------------ requests

    def _wait_turn(self, url: str) -> None:
        if not self.min_interval:
            return
        host = urlsplit(url).netloc
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, 0.0))
            self._next_slot[host] = slot + self.min_interval
        if slot > now:
            time.sleep(slot - now)

    def _send(self, method: str, url: str, **kwargs) -> httpx.Response:
        """One request with retries; the response is streamed (the caller reads and closes it)."""
        attempt = 0
        while True:
            self._wait_turn(url)
            try:
                request = self.client.build_request(method, url, **kwargs)
                response = self.client.send(request, stream=True)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.retries:
                    raise WebError(f"{method} {_public(url)} failed after {attempt + 1} attempt(s): "
                                   f"{type(exc).__name__}") from None
                delay = self.backoff * 2 ** attempt
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    return response
                delay = self.backoff * 2 ** attempt
                retry_after = response.headers.get("retry-after", "")
                if retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER_S))
                response.close()
            attempt += 1
            time.sleep(delay)

    def get_json(self, url: str, *, params: dict, headers: dict | None = None, cache_key: str) -> dict:
        """GET a JSON API (a configured search endpoint: trusted, not guarded), cached by `cache_key`."""
        hit = self.cached(cache_key)
        if hit is not None:
            return hit
        response = self._send("GET", url, params=params, headers=headers or {})
        try:
            body = _read_capped(response, self.max_bytes)[0]
        finally:
            response.close()
        if response.status_code != 200:
            detail = body[:200].decode(errors="replace")
            raise WebError(f"GET {_public(url)} answered HTTP {response.status_code}: {detail}")
        try:
            data = json.loads(body)
        except ValueError:
            raise WebError(f"GET {_public(url)} did not answer JSON") from None
        self.store(cache_key, data)
        return data

    def fetch(self, url: str) -> Fetched:
        """GET a URL a model chose: every hop checked by the guard, at most `MAX_REDIRECTS` redirects, the body
        cut at `max_page_bytes`."""
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            check_url(current, allow_private=self.allow_private, allow_hosts=self.allow_hosts, resolve=self.resolve)
            response = self._send("GET", current)
            try:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    if not location:
                        raise WebError(f"{current} redirects without a Location")
                    current = urljoin(current, location)
                    continue
                body, truncated = _read_capped(response, self.max_bytes)
            finally:
                response.close()
            if response.status_code >= 400:
                raise WebError(f"GET {current} answered HTTP {response.status_code}")
            return Fetched(url=current, status=response.status_code,
                           content_type=response.headers.get("content-type", ""), body=body, truncated=truncated)
        raise WebError(f"{url} redirects more than {MAX_REDIRECTS} times")


def _read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], True
    return b"".join(chunks), False


def _public(url: str) -> str:
    """A URL without its query string, for messages (a query may hold a key for some APIs)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
