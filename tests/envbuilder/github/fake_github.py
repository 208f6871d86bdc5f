"""A GitHub of our own on 127.0.0.1: real HTTP, GitHub's REST and GraphQL response shapes.

It answers what the miner asks, the way api.github.com does:
- REST `GET /repos/{o}/{r}/pulls?state=closed&sort=updated&direction=desc&per_page=N` with `Link` headers
  (`rel="next"`, `"last"`, ... pointing at `/repositories/{id}/pulls?...&page=N`, as GitHub does),
  `GET /repos/{o}/{r}/pulls/{n}` (JSON, or the unified diff for `Accept: application/vnd.github.diff`),
  `GET /repos/{o}/{r}/pulls/{n}/files`, `GET /repos/{o}/{r}/issues/{n}` (pull requests answer too, with a
  `pull_request` key), `GET /rate_limit`;
- GraphQL `POST /graphql`: `repository.pullRequests(states: MERGED, first, after, orderBy UPDATED_AT DESC)`
  with files, commits and `closingIssuesReferences` inline, `pageInfo { endCursor hasNextPage }`,
  `rateLimit`; errors as GitHub words them (NOT_FOUND, undefinedField, RATE_LIMITED);
- `X-RateLimit-Limit/Remaining/Used/Reset/Resource` on every answer, a primary limit that answers 403 when
  spent, `ETag`s and `304 Not Modified` (costing no quota), 401 for a wrong token;
- scripted faults: a 502 then success, a 403 secondary limit with `Retry-After`, a 429, ...;
- a simulated latency per request, and a log of every request (never the Authorization value itself).

It does not parse GraphQL: it recognises the miner's page query by its fields and honours its variables.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

DOCS = "https://docs.github.com/rest"


# ---------------------------------------------------------------------------------------------- the data


def file_diff(path: str, *, added: list[str] | None = None, removed: list[str] | None = None,
              binary: bool = False, new: bool = False) -> str:
    """A valid `git diff` piece for one file."""
    digest = hashlib.sha1(path.encode()).hexdigest()[:7]
    if binary:
        return (f"diff --git a/{path} b/{path}\nnew file mode 100644\nindex 0000000..{digest}\n"
                f"Binary files /dev/null and b/{path} differ\n")
    added, removed = added or ["x = 1"], removed or []
    head = f"diff --git a/{path} b/{path}\n"
    if new:
        head += f"new file mode 100644\nindex 0000000..{digest}\n--- /dev/null\n+++ b/{path}\n"
        hunk = f"@@ -0,0 +1,{len(added)} @@\n"
    else:
        head += f"index 1234567..{digest} 100644\n--- a/{path}\n+++ b/{path}\n"
        hunk = f"@@ -1,{len(removed) + 1} +1,{len(added) + 1} @@\n context = 0\n"
    body = "".join(f"-{line}\n" for line in removed) + "".join(f"+{line}\n" for line in added)
    return head + hunk + body


@dataclass
class FakeIssue:
    number: int
    title: str
    body: str
    created_at: str
    labels: list[str] = field(default_factory=list)


@dataclass
class FakePull:
    number: int
    title: str
    body: str
    created_at: str
    updated_at: str
    merged_at: str | None  # None: closed without merging
    diffs: list[str]  # one `file_diff` per changed file
    closing_issues: list[int] = field(default_factory=list)  # what GitHub links as closed by this PR
    commit_messages: list[str] = field(default_factory=lambda: ["Change things"])
    base_sha: str = ""
    head_sha: str = ""
    merge_sha: str = ""

    def __post_init__(self) -> None:
        seed = hashlib.sha1(f"{self.number}".encode()).hexdigest()
        self.base_sha = self.base_sha or seed
        self.head_sha = self.head_sha or hashlib.sha1(f"head{self.number}".encode()).hexdigest()
        self.merge_sha = self.merge_sha or hashlib.sha1(f"merge{self.number}".encode()).hexdigest()

    @property
    def diff(self) -> str:
        return "".join(self.diffs)

    def files(self) -> list[dict[str, Any]]:
        out = []
        for piece in self.diffs:
            path = re.match(r"diff --git a/(\S+) b/(\S+)", piece).group(2)
            lines = piece.splitlines()
            adds = sum(1 for line in lines if line.startswith("+") and not line.startswith("+++"))
            dels = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
            status = "added" if "new file mode" in piece else "modified"
            hunks = piece.find("\n@@")
            out.append({"path": path, "additions": adds, "deletions": dels, "status": status,
                        "patch": piece[hunks + 1:] if hunks >= 0 else None})
        return out


@dataclass
class FakeRepo:
    owner: str
    name: str
    id: int = 0
    pulls: dict[int, FakePull] = field(default_factory=dict)
    issues: dict[int, FakeIssue] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def add_pull(self, pull: FakePull) -> FakePull:
        self.pulls[pull.number] = pull
        return pull

    def add_issue(self, issue: FakeIssue) -> FakeIssue:
        self.issues[issue.number] = issue
        return issue


@dataclass
class Fault:
    method: str | None
    pattern: re.Pattern
    status: int
    times: int
    headers: dict[str, str]
    body: Any


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    authorized: bool
    conditional: bool
    graphql_variables: dict[str, Any] | None = None


@dataclass
class Quota:
    limit: int
    remaining: int
    reset: float


# ---------------------------------------------------------------------------------------------- the server


class FakeGithub:
    def __init__(self, *, token: str | None = None, latency_s: float = 0.0, limit: int = 5000,
                 anonymous_limit: int = 60, supports_closing_issues: bool = True, window_s: float = 3600.0):
        self.token = token
        self.latency_s = latency_s
        self.limit = limit
        self.anonymous_limit = anonymous_limit
        self.supports_closing_issues = supports_closing_issues
        self.window_s = window_s
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self.quotas: dict[tuple[bool, str], Quota] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ setup

    def add_repo(self, owner: str, name: str) -> FakeRepo:
        repo = FakeRepo(owner, name, id=1000 + len(self.repos))
        self.repos[repo.full_name.lower()] = repo
        return repo

    def fail(self, pattern: str, status: int, *, times: int = 1, method: str | None = None,
             headers: dict[str, str] | None = None, body: Any = None) -> None:
        """The next `times` requests whose path matches `pattern` get `status` (a 502, a 403 with
        Retry-After, ...) instead of their answer."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(pattern), status, times, headers or {}, body))

    def set_quota(self, resource: str, *, remaining: int, reset_in: float, authenticated: bool = True) -> None:
        with self.lock:
            self.quotas[(authenticated, resource)] = Quota(self.limit if authenticated else self.anonymous_limit,
                                                           remaining, time.time() + reset_in)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeGithub:
        owner = self

        class Handler(_Handler):
            fake = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeGithub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, *, method: str | None = None, path: str | None = None, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if (method is None or r.method == method)
                       and (path is None or re.search(path, r.path)) and (status is None or r.status == status))

    def reset_log(self) -> None:
        with self.lock:
            self.requests.clear()

    # ------------------------------------------------------------------------------------------ quota

    def _quota(self, authenticated: bool, resource: str) -> Quota:
        key = (authenticated, resource)
        now = time.time()
        quota = self.quotas.get(key)
        if quota is None or now >= quota.reset:
            limit = self.limit if authenticated else self.anonymous_limit
            quota = self.quotas[key] = Quota(limit, limit, now + self.window_s)
        return quota

    def _fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and (fault.method is None or fault.method == method) and fault.pattern.search(path):
                fault.times -= 1
                return fault
        return None


def _etag(body: bytes, weak: bool = True) -> str:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return f'W/"{digest}"' if weak else f'"{digest}"'


def _cursor(pull: FakePull) -> str:
    return base64.b64encode(f"cursor:v2:{json.dumps([pull.updated_at, pull.number])}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, int]:
    text = base64.b64decode(cursor).decode()
    updated, number = json.loads(text[len("cursor:v2:"):])
    return updated, number


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGithub
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle/delayed-ACK stalls

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    # ------------------------------------------------------------------------------------------ dispatch

    def _handle(self, method: str) -> None:
        fake = self.fake
        if fake.latency_s:
            time.sleep(fake.latency_s)
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization")
        authorized = False
        variables = None
        if method == "POST" and path == "/graphql":
            try:
                variables = json.loads(raw or b"{}").get("variables")
            except ValueError:
                variables = None
        record = RecordedRequest(method, path, query, 0, False, bool(self.headers.get("If-None-Match")), variables)
        if auth is not None:
            if fake.token is None or auth not in (f"Bearer {fake.token}", f"token {fake.token}"):
                return self._send(record, 401, {"message": "Bad credentials", "documentation_url": DOCS})
            authorized = True
        record.authorized = authorized
        resource = "graphql" if path == "/graphql" else "core"
        with fake.lock:
            fault = fake._fault(method, path)
            quota = fake._quota(authorized, resource)
        if fault is not None:
            headers = dict(fault.headers)
            return self._send(record, fault.status, fault.body if fault.body is not None else
                              {"message": "Server Error"}, headers=headers, quota=quota, resource=resource)
        if quota.remaining <= 0:
            return self._send(record, 403, {"message": f"API rate limit exceeded for {'user' if authorized else 'IP'}.",
                                            "documentation_url": DOCS}, quota=quota, resource=resource)
        try:
            if method == "POST" and path == "/graphql":
                if not authorized:
                    return self._send(record, 401, {"message": "This endpoint requires you to be authenticated.",
                                                    "documentation_url": DOCS})
                return self._graphql(record, json.loads(raw or b"{}"), quota)
            if method == "GET":
                return self._rest(record, path, query, quota)
        except KeyError:
            pass
        return self._send(record, 404, {"message": "Not Found", "documentation_url": DOCS}, quota=quota,
                          resource=resource)

    def _send(self, record: RecordedRequest, status: int, body: Any, *, headers: dict[str, str] | None = None,
              quota: Quota | None = None, resource: str = "core", etag: bool = False,
              content_type: str = "application/json; charset=utf-8") -> None:
        fake = self.fake
        data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = dict(headers or {})
        if etag and status == 200:
            tag = _etag(data, weak=content_type.startswith("application/json"))
            headers["ETag"] = tag
            if self.headers.get("If-None-Match") == tag:
                status, data = 304, b""
        if quota is not None:
            with fake.lock:
                if status != 304 and status < 500 and status not in (401,) and quota.remaining > 0 \
                        and "Retry-After" not in headers:
                    quota.remaining -= 1
                headers.setdefault("X-RateLimit-Limit", str(quota.limit))
                headers.setdefault("X-RateLimit-Remaining", str(quota.remaining))
                headers.setdefault("X-RateLimit-Used", str(quota.limit - quota.remaining))
                headers.setdefault("X-RateLimit-Reset", str(int(quota.reset)))
                headers.setdefault("X-RateLimit-Resource", resource)
        record.status = status
        with fake.lock:
            fake.requests.append(record)
        self.send_response(status)
        if status != 304:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    # ------------------------------------------------------------------------------------------ REST

    def _repo(self, owner: str, name: str) -> FakeRepo:
        return self.fake.repos[f"{owner}/{name}".lower()]

    def _rest(self, record: RecordedRequest, path: str, query: dict[str, list[str]], quota: Quota) -> None:
        fake = self.fake
        if path == "/rate_limit":
            return self._send(record, 200, {"resources": {"core": {"limit": quota.limit, "remaining": quota.remaining,
                                                                   "reset": int(quota.reset)}}}, quota=quota)
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls", path) or re.fullmatch(r"/repositories/(\d+)/pulls", path)
        if match:
            if len(match.groups()) == 1:
                repo = next(r for r in fake.repos.values() if r.id == int(match.group(1)))
            else:
                repo = self._repo(*match.groups())
            return self._list_pulls(record, repo, query, quota)
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls/(\d+)(/files)?", path)
        if match:
            repo = self._repo(match.group(1), match.group(2))
            pull = repo.pulls[int(match.group(3))]
            if match.group(4):
                return self._send(record, 200, [self._rest_file(f) for f in pull.files()], quota=quota, etag=True)
            if "diff" in (self.headers.get("Accept") or ""):
                return self._send(record, 200, pull.diff, quota=quota, etag=True,
                                  content_type="text/plain; charset=utf-8")
            return self._send(record, 200, self._rest_pull(repo, pull), quota=quota, etag=True)
        match = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/(\d+)", path)
        if match:
            repo = self._repo(match.group(1), match.group(2))
            number = int(match.group(3))
            if number in repo.pulls:
                return self._send(record, 200, self._rest_issue_of_pull(repo, repo.pulls[number]), quota=quota,
                                  etag=True)
            return self._send(record, 200, self._rest_issue(repo, repo.issues[number]), quota=quota, etag=True)
        raise KeyError(path)

    def _list_pulls(self, record: RecordedRequest, repo: FakeRepo, query: dict[str, list[str]], quota: Quota) -> None:
        state = query.get("state", ["open"])[0]
        per_page = min(100, int(query.get("per_page", ["30"])[0]))
        page = int(query.get("page", ["1"])[0])
        pulls = [p for p in repo.pulls.values() if state == "all" or (state == "closed")]
        key = (lambda p: (p.updated_at, p.number)) if query.get("sort", ["created"])[0] == "updated" \
            else (lambda p: (p.created_at, p.number))
        pulls.sort(key=key, reverse=query.get("direction", ["desc"])[0] == "desc")
        last = max(1, -(-len(pulls) // per_page))
        chunk = pulls[(page - 1) * per_page: page * per_page]
        base = {k: v[0] for k, v in query.items() if k != "page"}
        link = lambda n, rel: f'<{self.fake.url}/repositories/{repo.id}/pulls?{urlencode({**base, "page": n})}>; rel="{rel}"'  # noqa: E731
        links = []
        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        headers = {"Link": ", ".join(links)} if links else {}
        return self._send(record, 200, [self._rest_pull(repo, p) for p in chunk], headers=headers, quota=quota,
                          etag=True)

    def _rest_pull(self, repo: FakeRepo, pull: FakePull) -> dict[str, Any]:
        api = f"{self.fake.url}/repos/{repo.full_name}"
        html = f"https://github.com/{repo.full_name}/pull/{pull.number}"
        return {
            "url": f"{api}/pulls/{pull.number}", "id": repo.id * 100000 + pull.number,
            "node_id": f"PR_{pull.number}", "html_url": html, "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch", "issue_url": f"{api}/issues/{pull.number}", "number": pull.number,
            "state": "closed", "locked": False, "title": pull.title, "user": {"login": "contributor", "id": 7},
            "body": pull.body, "created_at": pull.created_at, "updated_at": pull.updated_at,
            "closed_at": pull.merged_at or pull.updated_at, "merged_at": pull.merged_at,
            "merge_commit_sha": pull.merge_sha, "draft": False, "labels": [],
            "head": {"label": "contributor:fix", "ref": "fix", "sha": pull.head_sha},
            "base": {"label": f"{repo.owner}:main", "ref": "main", "sha": pull.base_sha,
                     "repo": {"id": repo.id, "full_name": repo.full_name}},
            "author_association": "CONTRIBUTOR",
        }

    def _rest_file(self, info: dict[str, Any]) -> dict[str, Any]:
        out = {"sha": hashlib.sha1(info["path"].encode()).hexdigest(), "filename": info["path"],
               "status": info["status"], "additions": info["additions"], "deletions": info["deletions"],
               "changes": info["additions"] + info["deletions"]}
        if info["patch"]:
            out["patch"] = info["patch"]
        return out

    def _rest_issue(self, repo: FakeRepo, issue: FakeIssue) -> dict[str, Any]:
        return {"url": f"{self.fake.url}/repos/{repo.full_name}/issues/{issue.number}", "id": issue.number + 5000,
                "html_url": f"https://github.com/{repo.full_name}/issues/{issue.number}", "number": issue.number,
                "state": "closed", "state_reason": "completed", "title": issue.title, "body": issue.body,
                "user": {"login": "reporter", "id": 9}, "labels": [{"name": n, "color": "d73a4a"} for n in issue.labels],
                "comments": 0, "created_at": issue.created_at, "updated_at": issue.created_at,
                "closed_at": issue.created_at, "author_association": "NONE"}

    def _rest_issue_of_pull(self, repo: FakeRepo, pull: FakePull) -> dict[str, Any]:
        api = f"{self.fake.url}/repos/{repo.full_name}"
        html = f"https://github.com/{repo.full_name}/pull/{pull.number}"
        issue = self._rest_issue(repo, FakeIssue(pull.number, pull.title, pull.body, pull.created_at))
        issue["html_url"] = html
        issue["pull_request"] = {"url": f"{api}/pulls/{pull.number}", "html_url": html, "diff_url": f"{html}.diff",
                                 "patch_url": f"{html}.patch", "merged_at": pull.merged_at}
        return issue

    # ------------------------------------------------------------------------------------------ GraphQL

    def _graphql(self, record: RecordedRequest, payload: dict[str, Any], quota: Quota) -> None:
        query, variables = payload.get("query", ""), payload.get("variables") or {}
        if "pullRequests(" not in query:
            return self._send(record, 200, {"errors": [{"message": "the fake GitHub only knows the miner's query"}]},
                              quota=quota, resource="graphql")
        if "closingIssuesReferences" in query and not self.fake.supports_closing_issues:
            return self._send(record, 200, {"errors": [{
                "path": ["query MergedPullRequests", "repository", "pullRequests", "nodes", "closingIssuesReferences"],
                "extensions": {"code": "undefinedField", "typeName": "PullRequest",
                               "fieldName": "closingIssuesReferences"},
                "locations": [{"line": 14, "column": 9}],
                "message": "Field 'closingIssuesReferences' doesn't exist on type 'PullRequest'"}]},
                quota=quota, resource="graphql")
        owner, name = variables.get("owner", ""), variables.get("name", "")
        repo = self.fake.repos.get(f"{owner}/{name}".lower())
        if repo is None:
            return self._send(record, 200, {"data": {"repository": None}, "errors": [{
                "type": "NOT_FOUND", "path": ["repository"], "locations": [{"line": 4, "column": 3}],
                "message": f"Could not resolve to a Repository with the name '{owner}/{name}'."}]},
                quota=quota, resource="graphql")
        first = int(variables.get("first") or 0)
        if not 1 <= first <= 100:
            return self._send(record, 200, {"errors": [{"message": "Requesting %d records on the `pullRequests` "
                                                        "connection exceeds the `first` limit of 100 records." % first}]},
                              quota=quota, resource="graphql")
        merged = sorted((p for p in repo.pulls.values() if p.merged_at), key=lambda p: (p.updated_at, p.number),
                        reverse=True)
        after = variables.get("after")
        if after:
            mark = _decode_cursor(after)
            merged = [p for p in merged if (p.updated_at, p.number) < mark]
        chunk = merged[:first]
        connection = {"totalCount": sum(1 for p in repo.pulls.values() if p.merged_at),
                      "pageInfo": {"endCursor": _cursor(chunk[-1]) if chunk else None,
                                   "hasNextPage": len(merged) > first},
                      "nodes": [self._graphql_pull(repo, p, "closingIssuesReferences" in query) for p in chunk]}
        data: dict[str, Any] = {"repository": {"nameWithOwner": repo.full_name, "pullRequests": connection}}
        if "rateLimit" in query:
            data = {"rateLimit": {"cost": 1, "remaining": max(0, quota.remaining - 1), "limit": quota.limit,
                                  "resetAt": dt.datetime.fromtimestamp(quota.reset, dt.timezone.utc)
                                  .strftime("%Y-%m-%dT%H:%M:%SZ")}, **data}
        return self._send(record, 200, {"data": data}, quota=quota, resource="graphql")

    def _graphql_pull(self, repo: FakeRepo, pull: FakePull, closing: bool) -> dict[str, Any]:
        files = pull.files()
        node = {
            "number": pull.number, "title": pull.title, "body": pull.body,
            "url": f"https://github.com/{repo.full_name}/pull/{pull.number}", "createdAt": pull.created_at,
            "updatedAt": pull.updated_at, "mergedAt": pull.merged_at, "baseRefOid": pull.base_sha,
            "headRefOid": pull.head_sha, "mergeCommit": {"oid": pull.merge_sha}, "author": {"login": "contributor"},
            "files": {"totalCount": len(files), "nodes": [
                {"path": f["path"], "additions": f["additions"], "deletions": f["deletions"],
                 "changeType": "ADDED" if f["status"] == "added" else "MODIFIED"} for f in files[:100]]},
            "commits": {"totalCount": len(pull.commit_messages),
                        "nodes": [{"commit": {"message": m}} for m in pull.commit_messages[:50]]},
        }
        if closing:
            node["closingIssuesReferences"] = {"nodes": [
                {"number": i.number, "title": i.title, "body": i.body, "createdAt": i.created_at,
                 "url": f"https://github.com/{repo.full_name}/issues/{i.number}",
                 "repository": {"nameWithOwner": repo.full_name},
                 "labels": {"nodes": [{"name": n} for n in i.labels]}}
                for i in (repo.issues[n] for n in pull.closing_issues if n in repo.issues)][:10]}
        return node
