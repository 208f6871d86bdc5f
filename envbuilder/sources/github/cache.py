"""The on-disk cache of conditional requests, under `<home>/cache/github/`.

Every GET answered with an `ETag` (or `Last-Modified`) is kept, compressed, keyed by its URL and Accept
header. The next GET for it sends `If-None-Match`; GitHub answers `304 Not Modified`, which costs no
primary rate-limit quota, and the cached body is used. Request headers are never stored (the token is one).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zstandard

# Response headers worth keeping with a body: pagination and the media type.
KEPT_HEADERS = ("link", "content-type")


@dataclass
class CachedResponse:
    url: str
    etag: str | None
    last_modified: str | None
    headers: dict[str, str]
    body: bytes


class ConditionalCache:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def _path(self, url: str, accept: str) -> Path:
        digest = hashlib.sha256(f"{url}\n{accept}".encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.json.zst"

    def get(self, url: str, accept: str) -> CachedResponse | None:
        path = self._path(url, accept)
        try:
            raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
            data = json.loads(raw)
        except (OSError, ValueError, zstandard.ZstdError):
            return None  # absent, or half-written by a crashed process: simply not cached
        return CachedResponse(data["url"], data.get("etag"), data.get("last_modified"), data.get("headers", {}),
                              data["body"].encode("latin-1"))

    def put(self, url: str, accept: str, *, etag: str | None, last_modified: str | None,
            headers: dict[str, str], body: bytes) -> None:
        if not etag and not last_modified:
            return
        path = self._path(url, accept)
        data = {"url": url, "etag": etag, "last_modified": last_modified,
                "headers": {k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS},
                "body": body.decode("latin-1")}
        compressed = zstandard.ZstdCompressor(level=3).compress(json.dumps(data).encode())
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
        tmp.write_bytes(compressed)
        os.replace(tmp, path)
