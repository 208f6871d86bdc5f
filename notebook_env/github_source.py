"""A GitHub repository's notebooks and data files, fetched through the project's GitHub client into a local
snapshot that the git miner's filters then read (`tasksynth notebook mine --github OWNER/NAME`).

    GET /repos/{o}/{r}                               -> default_branch
    GET /repos/{o}/{r}/commits/{branch}              -> the commit's sha and its tree's sha
    GET /repos/{o}/{r}/git/trees/{tree}?recursive=1  -> every path with its blob sha and size
                                                        (`truncated`: the subtrees are walked one by one)
    GET /repos/{o}/{r}/git/blobs/{sha}               -> a file's bytes (base64), checked against its sha

Only what a notebook task needs is fetched: the notebooks, and the data and code files next to them
(`WANTED_SUFFIXES`), each at most `MAX_FILE_BYTES`, all together at most `MAX_SNAPSHOT_BYTES`; a file left
out shows later as the notebook's `missing_data`. The snapshot lives under
`<home>/notebook/github/<owner>/<name>/<commit>/`. A file is written whole (temporary name, then renamed) and
is reused by a rerun only when its git blob sha matches, so a run killed mid-fetch resumes without fetching a
finished file again. The client keeps the token in its own headers (never in a URL, a file or an error),
waits out rate limits and revalidates with ETags; `GithubError` is this source's one exception.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import quote

from envbuilder.sources.github.client import GithubClient, GithubError
from notebook_env.mining import MAX_FILE_BYTES

NOTEBOOK_SUFFIX = ".ipynb"
# Tables and the small files a notebook reads beside them, and local modules it may import.
WANTED_SUFFIXES = (NOTEBOOK_SUFFIX, ".csv", ".tsv", ".txt", ".json", ".jsonl", ".parquet", ".feather", ".xlsx",
                   ".xls", ".npy", ".npz", ".dat", ".py")
MAX_SNAPSHOT_BYTES = 200 * 1024 * 1024


@dataclass
class TreeFile:
    path: str
    sha: str
    size: int


@dataclass
class Snapshot:
    repo: str  # owner/name
    commit: str
    folder: Path
    notebooks: list[str]  # paths inside the repository, sorted
    fetched: int = 0  # files downloaded this run
    reused: int = 0  # files a previous run had already written, same blob sha
    left_out: dict[str, str] = field(default_factory=dict)  # path -> why it was not fetched


def git_blob_sha(content: bytes) -> str:
    """The sha git (and GitHub's trees API) names a file's content by."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def snapshot_folder(home: Path, repo: str, commit: str) -> Path:
    owner, name = repo.split("/")
    return home / "notebook" / "github" / owner / name / commit


def fetch_snapshot(client: GithubClient, repo: str, home: Path, *,
                   progress: Callable[[str], None] = lambda line: None) -> Snapshot:
    """The repository's default branch, as the files a notebook task needs, in a local folder."""
    base = f"/repos/{repo}"
    branch = client.get(base).json().get("default_branch") or "main"
    commit = client.get(f"{base}/commits/{quote(branch, safe='')}").json()
    commit_sha, tree_sha = commit["sha"], commit["commit"]["tree"]["sha"]
    files = list_tree(client, repo, tree_sha)
    wanted, left_out = choose_files(files)
    folder = snapshot_folder(home, repo, commit_sha)
    for stale in folder.rglob(".*.part*"):  # what a killed run was writing
        stale.unlink()
    snapshot = Snapshot(repo, commit_sha, folder, sorted(f.path for f in wanted if f.path.endswith(NOTEBOOK_SUFFIX)),
                        left_out=left_out)
    for number, file in enumerate(wanted, 1):
        target = folder / file.path
        if target.is_file() and git_blob_sha(target.read_bytes()) == file.sha:
            snapshot.reused += 1
            continue
        progress(f"[{number}/{len(wanted)}] fetching {file.path} ({file.size} bytes)")
        content = fetch_blob(client, repo, file.sha)
        _write_whole(target, content)
        snapshot.fetched += 1
    return snapshot


def list_tree(client: GithubClient, repo: str, tree_sha: str) -> list[TreeFile]:
    """Every file of a tree, through one recursive listing; when GitHub truncates it (over 100,000 entries
    or 7 MB), through the subtrees one listing each."""
    listing = client.get(f"/repos/{repo}/git/trees/{tree_sha}", params={"recursive": "1"}).json()
    if not listing.get("truncated"):
        return [_tree_file(entry, "") for entry in listing.get("tree", []) if _is_file(entry)]
    files: list[TreeFile] = []
    pending = [("", tree_sha)]
    while pending:
        prefix, sha = pending.pop()
        for entry in client.get(f"/repos/{repo}/git/trees/{sha}").json().get("tree", []):
            if entry.get("type") == "tree":
                pending.append((f"{prefix}{entry['path']}/", entry["sha"]))
            elif _is_file(entry):
                files.append(_tree_file(entry, prefix))
    return files


def choose_files(files: list[TreeFile]) -> tuple[list[TreeFile], dict[str, str]]:
    """The files to fetch (notebooks first, then the rest by path) and why each other wanted one is not."""
    wanted, left_out, total = [], {}, 0
    ordered = sorted(files, key=lambda f: (not f.path.endswith(NOTEBOOK_SUFFIX), f.path))
    for file in ordered:
        if not file.path.lower().endswith(WANTED_SUFFIXES) or not _safe_path(file.path):
            continue
        if file.size > MAX_FILE_BYTES:
            left_out[file.path] = f"{file.size} bytes, over the {MAX_FILE_BYTES} per file"
        elif total + file.size > MAX_SNAPSHOT_BYTES:
            left_out[file.path] = f"the snapshot's {MAX_SNAPSHOT_BYTES} bytes are spent"
        else:
            wanted.append(file)
            total += file.size
    return wanted, left_out


def fetch_blob(client: GithubClient, repo: str, sha: str) -> bytes:
    data = client.get(f"/repos/{repo}/git/blobs/{sha}").json()
    if data.get("encoding") != "base64":
        raise GithubError(f"blob {sha} of {repo} came as {data.get('encoding')!r}, not base64")
    content = base64.b64decode(data.get("content") or "")
    if git_blob_sha(content) != sha:
        raise GithubError(f"blob {sha} of {repo}: the content does not hash to its sha")
    return content


def _is_file(entry: dict[str, Any]) -> bool:
    # Regular files only: symbolic links (120000) and submodules (type commit) are left out.
    return entry.get("type") == "blob" and entry.get("mode") in ("100644", "100755")


def _tree_file(entry: dict[str, Any], prefix: str) -> TreeFile:
    return TreeFile(prefix + entry["path"], entry["sha"], int(entry.get("size") or 0))


def _safe_path(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not path.startswith("/") and ".." not in parts and ".git" not in parts


def _write_whole(target: Path, content: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.part{os.getpid()}")
    temporary.write_bytes(content)
    os.replace(temporary, target)
