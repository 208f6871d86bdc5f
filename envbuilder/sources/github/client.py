"""An httpx client for GitHub's REST and GraphQL APIs that is patient instead of failing.

- Base URLs are configurable (`github.api_url`, `github.graphql_url`), so GitHub Enterprise works and the
  tests point it at 127.0.0.1.
- The token is read from the configured environment variable when the client is made and lives only in
  the `Authorization` header of the httpx client: no URL, log line, row, cache file or error carries it.
  Without a token the client works at GitHub's anonymous rate (REST only: GraphQL needs a token).
- Primary rate limit: every response's `X-RateLimit-Remaining`/`X-RateLimit-Reset` are remembered per
  resource (core, graphql); when none is left, the next request waits for the reset. A 403/429 that says
  so is waited out and retried.
- Secondary rate limits (403/429 with `Retry-After`, or a message saying so) are waited out as GitHub asks:
  `Retry-After` seconds, else until the reset, else one minute doubling each time.
- 5xx answers and broken connections are retried with exponential backoff.
- GETs are conditional through `ConditionalCache`: a 304 costs no quota and the cached body is returned.
- At most `concurrency` requests are in flight at once, whatever the number of threads using the client.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from envbuilder.sources.github.cache import ConditionalCache
from envbuilder.sources.github.waiting import CountdownSleeper, Sleeper
from tasksynth.config import Config, secret
from tasksynth.errors import TasksynthError

log = logging.getLogger(__name__)

JSON_MEDIA = "application/vnd.github+json"
DIFF_MEDIA = "application/vnd.github.diff"
API_VERSION = "2022-11-28"
RETRY_STATUSES = {500, 502, 503, 504}
_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="([^"]+)"')


class GithubError(TasksynthError):
    """GitHub refused or kept failing a request; `status` is the last HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Reply:
    """A response, from the network or from the conditional cache (`from_cache`)."""

    status: int
    headers: dict[str, str]
    content: bytes
    from_cache: bool = False

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def links(self) -> dict[str, str]:
        """The `Link` header: rel -> URL (next, last, prev, first)."""
        return {rel: url for url, rel in _LINK.findall(self.headers.get("link", ""))}


@dataclass
class RequestStats:
    """What the client has spent: the benchmark's and the funnel's request counts."""

    sent: int = 0  # HTTP requests that went out, retries included
    quota: int = 0  # those that cost rate-limit quota: all but the 304s
    not_modified: int = 0  # 304s, answered from the cache
    graphql: int = 0
    rest: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    waited_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def graphql_url_for(api_url: str) -> str:
    """github.com: https://api.github.com/graphql; Enterprise: https://HOST/api/v3 -> https://HOST/api/graphql."""
    base = api_url.rstrip("/")
    if base.endswith("/api/v3"):
        return base[: -len("/v3")] + "/graphql"
    return base + "/graphql"


class GithubClient:
    def __init__(self, api_url: str = "https://api.github.com", *, graphql_url: str = "", token: str | None = None,
                 cache_dir: str | Path | None = None, sleeper: Sleeper | None = None, concurrency: int = 4,
                 max_retries: int = 5, backoff_s: float = 1.0, max_rate_limit_waits: int = 8,
                 timeout_s: float = 30.0, transport: httpx.BaseTransport | None = None):
        self.api_url = api_url.rstrip("/")
        self.graphql_url = graphql_url or graphql_url_for(self.api_url)
        self.authenticated = bool(token)
        self.cache = ConditionalCache(cache_dir) if cache_dir else None
        self.sleep = sleeper or CountdownSleeper()
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_rate_limit_waits = max_rate_limit_waits
        self.stats = RequestStats()
        self._slots = threading.BoundedSemaphore(max(1, concurrency))
        self._limits: dict[str, tuple[int, float]] = {}  # resource -> (remaining, reset epoch seconds)
        self._limits_lock = threading.Lock()
        headers = {"User-Agent": "tasksynth", "X-GitHub-Api-Version": API_VERSION}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        limits = httpx.Limits(max_connections=max(1, concurrency), max_keepalive_connections=max(1, concurrency))
        self._http = httpx.Client(headers=headers, timeout=timeout_s, limits=limits, transport=transport,
                                  follow_redirects=True)

    @classmethod
    def from_config(cls, config: Config, *, sleeper: Sleeper | None = None, **kwargs: Any) -> GithubClient:
        """The configured client; the token is read from `github.token_env` now and kept nowhere else."""
        gh = config.github
        return cls(gh.api_url, graphql_url=gh.graphql_url, token=secret(gh.token_env),
                   cache_dir=config.home_path / "cache" / "github", sleeper=sleeper,
                   concurrency=gh.concurrency, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GithubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ REST

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.api_url}/{path.lstrip('/')}"

    def get(self, path: str, *, params: dict[str, Any] | None = None, accept: str = JSON_MEDIA) -> Reply:
        """A conditional GET: a cached body is revalidated with If-None-Match and reused on 304."""
        url = str(httpx.URL(self.url(path), params=params)) if params else self.url(path)
        cached = self.cache.get(url, accept) if self.cache else None
        headers = {"Accept": accept}
        if cached and cached.etag:
            headers["If-None-Match"] = cached.etag
        elif cached and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        response = self._send("GET", url, headers=headers, resource="core")
        if response.status_code == 304 and cached:
            return Reply(200, {**cached.headers}, cached.body, from_cache=True)
        reply = Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content)
        if response.status_code >= 400:
            raise GithubError(f"GET {_display(url)}: HTTP {response.status_code}: {_message(reply)}",
                              response.status_code)
        if self.cache and response.status_code == 200:
            self.cache.put(url, accept, etag=response.headers.get("etag"),
                           last_modified=response.headers.get("last-modified"), headers=reply.headers,
                           body=response.content)
        return reply

    # ------------------------------------------------------------------------------------------ GraphQL

    def graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """The `data` of a GraphQL answer. A RATE_LIMITED error is waited out and retried; other errors raise
        `GithubError` with GitHub's messages."""
        if not self.authenticated:
            raise GithubError("GitHub's GraphQL API needs a token", 401)
        for attempt in range(self.max_rate_limit_waits + 1):
            response = self._send("POST", self.graphql_url, json_body={"query": query, "variables": variables},
                                  headers={"Accept": "application/json"}, resource="graphql")
            reply = Reply(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                          response.content)
            if response.status_code >= 400:
                raise GithubError(f"POST {_display(self.graphql_url)}: HTTP {response.status_code}: "
                                  f"{_message(reply)}", response.status_code)
            try:
                payload = reply.json()
            except ValueError:
                raise GithubError(f"POST {_display(self.graphql_url)}: the answer is not JSON") from None
            errors = payload.get("errors") or []
            if any(e.get("type") == "RATE_LIMITED" for e in errors):
                self._wait(self._primary_wait(reply.headers, default=60.0 * 2 ** attempt),
                           "GitHub GraphQL rate limit", resource="graphql")
                continue
            if errors:
                messages = "; ".join(str(e.get("message", e)) for e in errors[:3])
                raise GithubError(f"GraphQL: {messages}", response.status_code)
            return payload.get("data") or {}
        raise GithubError("GraphQL: still rate limited after waiting", 403)

    # ------------------------------------------------------------------------------------------ sending

    def _send(self, method: str, url: str, *, headers: dict[str, str], resource: str,
              json_body: Any = None) -> httpx.Response:
        attempt = 0
        limited = 0
        while True:
            self._wait_for_reset(resource)
            try:
                with self._slots:
                    response = self._http.request(method, url, headers=headers, json=json_body)
            except httpx.TransportError as exc:
                self.stats.add(sent=1)
                if attempt >= self.max_retries:
                    raise GithubError(f"{method} {_display(url)}: {type(exc).__name__} after "
                                      f"{attempt + 1} attempts") from None
                self._backoff(attempt, f"GitHub did not answer ({type(exc).__name__})")
                attempt += 1
                continue
            not_modified = response.status_code == 304
            self.stats.add(sent=1, quota=0 if not_modified else 1, not_modified=1 if not_modified else 0,
                           graphql=1 if resource == "graphql" else 0, rest=0 if resource == "graphql" else 1)
            self._remember_limits(response.headers, resource)
            log.debug("%s %s -> %s", method, _display(url), response.status_code)
            if response.status_code in (403, 429):
                wait = self._rate_limit_wait(response, limited)
                if wait is not None:
                    if limited >= self.max_rate_limit_waits:
                        raise GithubError(f"{method} {_display(url)}: still rate limited after {limited} waits",
                                          response.status_code)
                    limited += 1
                    kind = "secondary" if "secondary" in response.text.lower() or "retry-after" in response.headers \
                        else "primary"
                    self._wait(wait, f"GitHub {kind} rate limit ({resource})", resource=resource)
                    continue
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self._backoff(attempt, f"GitHub answered {response.status_code}")
                attempt += 1
                continue
            return response

    def _rate_limit_wait(self, response: httpx.Response, times: int) -> float | None:
        """How long GitHub asks us to wait, or None when this 403/429 is not a rate limit (a permission)."""
        retry_after = response.headers.get("retry-after")
        if retry_after is not None:
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                pass
        if response.headers.get("x-ratelimit-remaining") == "0":
            return self._primary_wait(response.headers, default=60.0)
        if response.status_code == 429 or "rate limit" in response.text.lower():
            return min(60.0 * 2 ** times, 900.0)
        return None

    @staticmethod
    def _primary_wait(headers: Any, *, default: float) -> float:
        reset = headers.get("x-ratelimit-reset")
        if reset is None:
            return default
        return max(0.0, float(reset) - time.time()) + 1.0

    def _remember_limits(self, headers: httpx.Headers, resource: str) -> None:
        remaining, reset = headers.get("x-ratelimit-remaining"), headers.get("x-ratelimit-reset")
        if remaining is None or reset is None:
            return
        with self._limits_lock:
            self._limits[headers.get("x-ratelimit-resource", resource)] = (int(remaining), float(reset))

    def _wait_for_reset(self, resource: str) -> None:
        with self._limits_lock:
            remaining, reset = self._limits.get(resource, (1, 0.0))
        if remaining <= 0 and reset > time.time():
            self._wait(reset - time.time() + 1.0, f"GitHub rate limit ({resource}) spent until the reset",
                       resource=resource)

    def _backoff(self, attempt: int, reason: str) -> None:
        self.stats.add(retries=1)
        self.sleep(min(self.backoff_s * 2 ** attempt, 60.0), reason)

    def _wait(self, seconds: float, reason: str, *, resource: str) -> None:
        """Wait as GitHub asked; afterwards the remembered limit of `resource` is stale and forgotten (the
        next answer brings fresh headers)."""
        self.stats.add(rate_limit_waits=1, waited_s=seconds)
        self.sleep(seconds, reason)
        with self._limits_lock:
            self._limits.pop(resource, None)

    def rate_limits(self) -> dict[str, tuple[int, float]]:
        with self._limits_lock:
            return dict(self._limits)


def _display(url: str) -> str:
    """A URL as it may appear in logs and errors: scheme, host and path (query strings left out)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}"


def _message(reply: Reply) -> str:
    try:
        data = reply.json()
    except ValueError:
        return reply.text[:200]
    return str(data.get("message", ""))[:200] if isinstance(data, dict) else ""
