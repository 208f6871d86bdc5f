"""The project's fake GitHub (tests/envbuilder/github/fake_github.py) taught a repository's files, with the REST
shapes api.github.com gives them:

- `GET /repos/{o}/{r}`: the repository, with its `default_branch`;
- `GET /repos/{o}/{r}/commits/{ref}`: the commit (`sha`, `commit.tree.sha`);
- `GET /repos/{o}/{r}/git/trees/{sha}[?recursive=1]`: `{sha, url, tree: [{path, mode, type, sha, size, url}],
  truncated}`, directories as `tree` entries, files as `blob` entries named by their git blob sha;
- `GET /repos/{o}/{r}/git/blobs/{sha}`: `{sha, node_id, size, url, content, encoding: "base64"}`, the content
  wrapped at 60 characters as GitHub sends it.

Everything else (quotas, ETags, faults, the request log, the token check) is the fake GitHub's own. A test can
hold blob requests after the first `hold_blobs_after` (to kill a client mid-fetch); a held request is
never answered, and not logged.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envbuilder" / "github"))

from fake_github import FakeGithub, RecordedRequest, _Handler  # noqa: E402


def blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeGithubWithFiles(FakeGithub):
    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.files: dict[str, dict[str, bytes]] = {}  # owner/name (lower case) -> path -> content
        self.symlinks: dict[str, dict[str, str]] = {}
        self.truncate_trees = False  # recursive listings come back truncated, as GitHub does for huge trees
        self.hold_blobs_after: int | None = None
        self.blobs_served = 0
        self.blob_waiting = threading.Event()  # set while a held blob request waits
        self.release = threading.Event()

    def add_files(self, owner: str, name: str, files: dict[str, bytes], *, symlinks: dict[str, str] | None = None):
        repo = self.add_repo(owner, name)
        self.files[repo.full_name.lower()] = dict(files)
        self.symlinks[repo.full_name.lower()] = dict(symlinks or {})
        return repo

    def start(self) -> FakeGithubWithFiles:
        owner = self

        class Handler(_FilesHandler):
            fake = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        super().stop()

    # ------------------------------------------------------------------------------------------ git objects

    def objects(self, full_name: str) -> tuple[str, str, dict[str, dict[str, Any]], dict[str, bytes]]:
        """(commit sha, root tree sha, tree sha -> listing, blob sha -> content) of a repository."""
        files, links = self.files[full_name.lower()], self.symlinks[full_name.lower()]
        blobs = {blob_sha(content): content for content in files.values()}
        blobs.update({blob_sha(target.encode()): target.encode() for target in links.values()})
        trees: dict[str, dict[str, Any]] = {}

        def tree(prefix: str) -> str:
            entries = []
            names = sorted({p[len(prefix):].split("/")[0] for p in [*files, *links] if p.startswith(prefix)})
            for name in names:
                path = prefix + name
                if path in files:
                    entries.append({"path": name, "mode": "100644", "type": "blob", "sha": blob_sha(files[path]),
                                    "size": len(files[path])})
                elif path in links:
                    target = links[path].encode()
                    entries.append({"path": name, "mode": "120000", "type": "blob", "sha": blob_sha(target),
                                    "size": len(target)})
                else:
                    entries.append({"path": name, "mode": "040000", "type": "tree", "sha": tree(path + "/")})
            sha = hashlib.sha1(repr(entries).encode()).hexdigest()
            trees[sha] = {"entries": entries, "prefix": prefix}
            return sha

        root = tree("")
        commit = hashlib.sha1(f"commit {root}".encode()).hexdigest()
        return commit, root, trees, blobs


class _FilesHandler(_Handler):
    fake: FakeGithubWithFiles

    def _rest(self, record: RecordedRequest, path: str, query: dict[str, list[str]], quota: Any) -> None:
        parts = path.strip("/").split("/")
        if len(parts) < 3 or parts[0] != "repos" or f"{parts[1]}/{parts[2]}".lower() not in self.fake.files:
            return super()._rest(record, path, query, quota)
        full_name, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        api = f"{self.fake.url}/repos/{full_name}"
        commit, root, trees, blobs = self.fake.objects(full_name)
        if not rest:
            return self._send(record, 200, {"id": 1, "name": parts[2], "full_name": full_name, "private": False,
                                            "default_branch": "main", "url": api}, quota=quota, etag=True)
        if rest[0] == "commits" and len(rest) == 2 and rest[1] in ("main", commit):
            return self._send(record, 200, {"sha": commit, "url": f"{api}/commits/{commit}", "commit": {
                "message": "notebooks", "tree": {"sha": root, "url": f"{api}/git/trees/{root}"}}},
                quota=quota, etag=True)
        if rest[:2] == ["git", "trees"] and len(rest) == 3 and rest[2] in trees:
            recursive = query.get("recursive", ["0"])[0] not in ("0", "false", "")
            listing = self._listing(api, trees, rest[2], "", recursive)
            truncated = recursive and self.fake.truncate_trees
            return self._send(record, 200, {"sha": rest[2], "url": f"{api}/git/trees/{rest[2]}",
                                            "tree": listing[:2] if truncated else listing, "truncated": truncated},
                              quota=quota, etag=True)
        if rest[:2] == ["git", "blobs"] and len(rest) == 3 and rest[2] in blobs:
            if self._held():  # the client that asked was killed meanwhile: nothing is answered or logged
                self.close_connection = True
                return None
            content = blobs[rest[2]]
            encoded = base64.b64encode(content).decode()
            wrapped = "\n".join(encoded[i:i + 60] for i in range(0, len(encoded), 60)) + "\n"
            return self._send(record, 200, {"sha": rest[2], "node_id": f"B_{rest[2][:8]}", "size": len(content),
                                            "url": f"{api}/git/blobs/{rest[2]}", "content": wrapped,
                                            "encoding": "base64"}, quota=quota, etag=True)
        raise KeyError(path)

    def _listing(self, api: str, trees: dict[str, dict[str, Any]], sha: str, prefix: str,
                 recursive: bool) -> list[dict[str, Any]]:
        out = []
        for entry in trees[sha]["entries"]:
            kind = "trees" if entry["type"] == "tree" else "blobs"
            out.append({**entry, "path": prefix + entry["path"], "url": f"{api}/git/{kind}/{entry['sha']}"})
            if recursive and entry["type"] == "tree":
                out += self._listing(api, trees, entry["sha"], f"{prefix}{entry['path']}/", True)
        return out

    def _held(self) -> bool:
        fake = self.fake
        with fake.lock:
            fake.blobs_served += 1
            hold = fake.hold_blobs_after is not None and fake.blobs_served > fake.hold_blobs_after
        if hold:
            fake.blob_waiting.set()
            fake.release.wait(timeout=120)
        return hold
