"""Mining notebooks from a git repository on the real sandbox kernel: one accepted, and one rejected for
each filter reason, each with its reason in the store; a second run mines nothing again."""

from __future__ import annotations

import json
import subprocess

import pytest
from mined_notebooks import DATA, NOTEBOOKS

pytestmark = pytest.mark.docker


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "repo"
    (root / "analysis" / "data").mkdir(parents=True)
    (root / "analysis" / "data" / "visits.csv").write_text(DATA)
    for path, text in NOTEBOOKS.items():
        (root / path).write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "nb"],
                   check=True)
    return root


def test_notebooks_are_mined_with_a_reason_for_each_one_left_out(home, tmp_path, tasksynth, repo, kernel_image_tag):
    (tmp_path / "tasksynth.toml").write_text('[docker]\nmemory = "768m"\n')
    result = tasksynth("notebook", "mine", "--git", str(repo), cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr + result.stdout
    rows = json.loads(tasksynth("sql", "--json", "select status, reason, detail, question, answer, answer_format "
                                "from notebook_tasks where source = 'mine'", cwd=tmp_path, check=True).stdout)
    by_path = {row["detail"].split(":", 1)[0]: row for row in rows}
    good = by_path["analysis/good.ipynb"]
    assert good["status"] == "kept" and good["question"] == "# How many visits did Lisbon get?"
    answer_format = good["answer_format"] if isinstance(good["answer_format"], dict) else json.loads(
        good["answer_format"])
    assert answer_format == {"type": "number", "decimals": 0}
    assert {path: row["reason"] for path, row in by_path.items() if row["status"] != "kept"} == {
        "unexecuted.ipynb": "unexecuted", "out_of_order.ipynb": "out_of_order", "errors.ipynb": "errors",
        "network.ipynb": "network", "gpu.ipynb": "gpu", "famous.ipynb": "famous_dataset",
        "missing.ipynb": "missing_data", "analysis/stale.ipynb": "not_reproducible"}
    discards = json.loads(tasksynth("sql", "--json", "select count(*) n from discards where stage = 'notebook.mine'",
                                    cwd=tmp_path, check=True).stdout)
    assert discards == [{"n": 8}]

    again = tasksynth("notebook", "mine", "--git", str(repo), cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and "kept  1" in again.stdout
    count = json.loads(tasksynth("sql", "--json", "select count(*) n from notebook_tasks", cwd=tmp_path,
                                 check=True).stdout)
    assert count == [{"n": 9}]
