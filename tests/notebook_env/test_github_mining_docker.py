"""`tasksynth notebook mine --github OWNER/NAME` against a GitHub of our own on 127.0.0.1 (the git trees and
blobs API shapes; fake_github_files.py) and the real sandbox kernel: a run killed mid-fetch, a rerun that
fetches only what is missing, waits out a secondary rate limit and mines one notebook accepted and the others
discarded with their reasons, a third run that does nothing again; the token nowhere on disk or in the output.
Without Docker: exactly one source is required, and a truncated tree is walked subtree by subtree."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fake_github_files import FakeGithubWithFiles, blob_sha
from mined_notebooks import DATA, NOTEBOOKS

TOKEN = "ghp_NotebookMinerSecret0123456789abcdefXYZ"
HUGE = 8 * 1024 * 1024 + 1  # over the per-file cap: listed by the tree, never fetched
FILES = {
    "analysis/data/visits.csv": DATA.encode(),
    "analysis/data/huge.csv": b"x\n" * (HUGE // 2) + b"x",
    "analysis/good.ipynb": NOTEBOOKS["analysis/good.ipynb"].encode(),
    "analysis/huge.ipynb": NOTEBOOKS["missing.ipynb"].replace("gone.csv", "data/huge.csv").encode(),
    "network.ipynb": NOTEBOOKS["network.ipynb"].encode(),
    "README.md": b"# analyses\n",  # not a file a notebook task needs: not fetched
}


@pytest.fixture
def fake():
    with FakeGithubWithFiles(token=TOKEN) as server:
        server.add_files("octo", "analyses", FILES, symlinks={"analysis/latest.csv": "data/visits.csv"})
        yield server


def _blob_requests(fake) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in fake.requests if "/git/blobs/" in r.path and r.status == 200]


@pytest.mark.docker
def test_a_github_repository_is_mined_resuming_after_a_kill(home, tmp_path, tasksynth, fake, kernel_image_tag):
    (tmp_path / "tasksynth.toml").write_text(f'[docker]\nmemory = "768m"\n\n[github]\napi_url = "{fake.url}"\n')
    env = {**os.environ, "GITHUB_TOKEN": TOKEN}
    fake.hold_blobs_after = 2  # the third blob is not answered: the run is killed while it waits
    exe = Path(sys.executable).parent / "tasksynth"
    child = subprocess.Popen([str(exe), "notebook", "mine", "--github", "octo/analyses"], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert fake.blob_waiting.wait(timeout=120), "the run never reached its third blob"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    before = _blob_requests(fake)
    assert len(before) == 2
    fake.hold_blobs_after = None
    fake.release.set()
    fake.fail(r"/git/trees/", 403, headers={"Retry-After": "1"},
              body={"message": "You have exceeded a secondary rate limit."})

    result = tasksynth("notebook", "mine", "--github", "https://github.com/octo/analyses", cwd=tmp_path,
                       env={"GITHUB_TOKEN": TOKEN}, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    fetched = _blob_requests(fake)
    assert sorted(fetched) == sorted(set(fetched)), "a file was fetched twice"
    wanted = {blob_sha(FILES[p]) for p in FILES if p != "analysis/data/huge.csv" and p != "README.md"}
    assert set(fetched) == wanted  # the two files finished before the kill were not fetched again
    assert "left out analysis/data/huge.csv" in result.stderr
    assert fake.count(path=r"/git/trees/", status=403) == 1  # the rate limit was waited out, then answered

    rows = json.loads(tasksynth("sql", "--json", "select dataset, status, reason, detail, question, answer, "
                                "data_files from "
                                "notebook_tasks where source = 'mine'", cwd=tmp_path, check=True).stdout)
    by_path = {row["detail"].split(":", 1)[0]: row for row in rows}
    assert set(by_path) == {"analysis/good.ipynb", "analysis/huge.ipynb", "network.ipynb"}
    good = by_path["analysis/good.ipynb"]
    assert good["status"] == "kept" and good["dataset"] == "octo/analyses"
    assert good["question"] == "# How many visits did Lisbon get?" and good["answer"] == "20"
    files = json.loads(good["data_files"]) if isinstance(good["data_files"], str) else good["data_files"]
    assert files == {"analysis/data/visits.csv": hashlib.sha256(DATA.encode()).hexdigest()}
    assert {path: row["reason"] for path, row in by_path.items() if row["status"] != "kept"} == {
        "analysis/huge.ipynb": "missing_data", "network.ipynb": "network"}
    discards = json.loads(tasksynth("sql", "--json", "select reason, repo from discards where stage = "
                                    "'notebook.mine' order by reason", cwd=tmp_path, check=True).stdout)
    assert discards == [{"reason": r, "repo": "octo/analyses"} for r in ("missing_data", "network")]

    fake.reset_log()
    again = tasksynth("notebook", "mine", "--github", "octo/analyses", cwd=tmp_path, env={"GITHUB_TOKEN": TOKEN},
                      timeout=600)
    assert again.returncode == 0 and "kept  1" in again.stdout
    assert _blob_requests(fake) == [] and "0 file(s) fetched" in again.stderr
    count = json.loads(tasksynth("sql", "--json", "select count(*) n from notebook_tasks", cwd=tmp_path,
                                 check=True).stdout)
    assert count == [{"n": 3}]

    assert all(request.authorized for request in fake.requests)
    for text in (result.stdout, result.stderr, again.stdout, again.stderr):
        assert TOKEN not in text
    for path in home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_exactly_one_source_is_required(home, tmp_path, tasksynth):
    neither = tasksynth("notebook", "mine", cwd=tmp_path)
    both = tasksynth("notebook", "mine", "--git", str(tmp_path), "--github", "octo/analyses", cwd=tmp_path)
    for result in (neither, both):
        assert result.returncode != 0
        assert "give exactly one source: --git PATH (a git repository) or --github OWNER/NAME" in result.stderr
        assert "Traceback" not in result.stderr
    bad = tasksynth("notebook", "mine", "--github", "not-a-repo", cwd=tmp_path)
    assert bad.returncode != 0 and "expected OWNER/NAME" in bad.stderr


def test_a_truncated_tree_is_walked_and_big_or_linked_files_are_left_out(fake):
    from envbuilder.sources.github.client import GithubClient
    from notebook_env.github_source import choose_files, list_tree

    commit, root, _, _ = fake.objects("octo/analyses")
    with GithubClient(fake.url, token=TOKEN, sleeper=lambda seconds, reason: None) as client:
        whole = list_tree(client, "octo/analyses", root)
        fake.truncate_trees = True
        walked = list_tree(client, "octo/analyses", root)
    assert sorted(f.path for f in walked) == sorted(f.path for f in whole) == sorted(FILES)  # no symlink
    assert fake.count(path=r"/git/trees/") == 1 + 1 + 3  # recursive, truncated recursive, then root + 2 subtrees
    wanted, left_out = choose_files(walked)
    assert [f.path for f in wanted][:3] == ["analysis/good.ipynb", "analysis/huge.ipynb",
                                            "network.ipynb"]  # notebooks first
    assert "README.md" not in {f.path for f in wanted}
    assert list(left_out) == ["analysis/data/huge.csv"] and "over the" in left_out["analysis/data/huge.csv"]
