"""SWE-bench-format instances in and out (`tasksynth code mine --swebench FILE.jsonl [--repos-dir DIR]`).

An instance is one JSON object per line with `instance_id, repo, base_commit, patch, test_patch,
problem_statement` and optionally `FAIL_TO_PASS`, `PASS_TO_PASS` (lists, or JSON strings of lists as in the
Hugging Face copies), `version`, `environment_setup_commit`, `hints_text`, `created_at`. The repository comes
from a local mirror under `--repos-dir` (`owner__name` or `owner/name`), else it is cloned when reachable.
`to_swebench` writes our candidates and verdicts back in the same format.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from envbuilder.errors import SourceError
from envbuilder.repos import find_mirror, has_commit, open_repository
from envbuilder.sources.candidate import Candidate, Discard
from envbuilder.sources.git_history import MineResult
from envbuilder.sources.patches import file_diffs, language_of

SOURCE = "swebench"
REQUIRED = ("instance_id", "repo", "base_commit", "patch", "test_patch", "problem_statement")


def import_instances(path: Path, home: Path, *, repos_dir: Path | None = None, clone: bool = True,
                     clone_base_url: str = "https://github.com") -> MineResult:
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"no SWE-bench file at {path}")
    result = MineResult()
    mirrors: dict[str, Path | SourceError] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        ref = f"{path.name}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            result.discards.append(Discard("mine", SOURCE, ref, "malformed_instance", detail=f"not JSON: {exc}"))
            continue
        found = _instance(row, ref, home, repos_dir, clone, clone_base_url, mirrors)
        (result.candidates if isinstance(found, Candidate) else result.discards).append(found)
    return result


def _instance(row: Any, ref: str, home: Path, repos_dir: Path | None, clone: bool, clone_base_url: str,
              mirrors: dict[str, Path | SourceError]) -> Candidate | Discard:
    if not isinstance(row, dict):
        return Discard("mine", SOURCE, ref, "malformed_instance", detail="a line that is not a JSON object")
    missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k)]
    if missing:
        item = row.get("instance_id") if isinstance(row.get("instance_id"), str) else ref
        return Discard("mine", SOURCE, item or ref, "malformed_instance", repo=row.get("repo"),
                       detail=f"missing or empty: {', '.join(missing)}")
    instance_id, repo = row["instance_id"], row["repo"]

    def discard(reason: str, detail: str) -> Discard:
        return Discard("mine", SOURCE, instance_id, reason, repo=repo, detail=detail)

    try:
        fail_to_pass = _test_list(row.get("FAIL_TO_PASS"), "FAIL_TO_PASS")
        pass_to_pass = _test_list(row.get("PASS_TO_PASS"), "PASS_TO_PASS")
    except ValueError as exc:
        return discard("malformed_instance", str(exc))
    if repo not in mirrors:
        mirrors[repo] = _locate(repo, home, repos_dir, clone, clone_base_url)
    mirror = mirrors[repo]
    if isinstance(mirror, SourceError):
        return discard("repo_unavailable", str(mirror))
    if not has_commit(mirror, row["base_commit"]):
        return discard("base_commit_missing", f"{row['base_commit']} is not in {mirror}")
    paths = [piece.path for piece in file_diffs(row["patch"])]
    return Candidate(
        source=SOURCE, repo=repo, base_commit=row["base_commit"], patch=_newline(row["patch"]),
        test_patch=_newline(row["test_patch"]), problem_statement=row["problem_statement"], instance_id=instance_id,
        repo_url=str(mirror), source_ref=ref, language=language_of(paths) or "python",
        hints=row.get("hints_text") or None, version=_text(row.get("version")),
        environment_setup_commit=row.get("environment_setup_commit") or None,
        imported_fail_to_pass=fail_to_pass, imported_pass_to_pass=pass_to_pass,
        created_at=_timestamp(row.get("created_at")),
        metadata={k: v for k, v in row.items() if k not in (*REQUIRED, "FAIL_TO_PASS", "PASS_TO_PASS", "version",
                                                             "environment_setup_commit", "hints_text", "created_at")})


def _locate(repo: str, home: Path, repos_dir: Path | None, clone: bool, clone_base_url: str) -> Path | SourceError:
    mirror = find_mirror(repo, repos_dir)
    if mirror:
        return mirror
    where = f" under {repos_dir}" if repos_dir else ""
    if not clone:
        return SourceError(f"no mirror of {repo}{where} (as {repo.replace('/', '__')} or {repo}) and cloning is off")
    try:
        return open_repository(f"{clone_base_url.rstrip('/')}/{repo}.git", home, clone=True)
    except SourceError as exc:
        return SourceError(f"no mirror of {repo}{where}, and cloning failed: {exc}")


def _test_list(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise ValueError(f"{name} is a string that is not a JSON list") from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of test ids")
    return value


def _newline(patch: str) -> str:
    return patch if patch.endswith("\n") else patch + "\n"


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def to_swebench(candidate: dict[str, Any], task: dict[str, Any] | None) -> dict[str, Any]:
    """One instance in SWE-bench's format from a stored candidate row and its code task (our lists when there
    is a verdict, the imported ones otherwise)."""
    row: dict[str, Any] = {
        "instance_id": candidate["instance_id"], "repo": candidate["repo"], "base_commit": candidate["base_commit"],
        "patch": candidate["patch"], "test_patch": candidate["test_patch"],
        "problem_statement": candidate["problem_statement"], "hints_text": candidate.get("hints") or "",
        "created_at": candidate["created_at"].isoformat() if candidate.get("created_at") else "",
        "version": candidate.get("version") or "",
        "environment_setup_commit": candidate.get("environment_setup_commit") or "",
    }
    if task:
        row["FAIL_TO_PASS"] = list(task.get("fail_to_pass") or [])
        row["PASS_TO_PASS"] = list(task.get("pass_to_pass") or [])
    else:
        row["FAIL_TO_PASS"] = list(candidate.get("imported_fail_to_pass") or [])
        row["PASS_TO_PASS"] = list(candidate.get("imported_pass_to_pass") or [])
    return row
