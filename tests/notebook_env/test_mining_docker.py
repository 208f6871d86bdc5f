"""Mining notebooks from a git repository on the real sandbox kernel: one accepted, and one rejected for
each filter reason, each with its reason in the store; a second run mines nothing again."""

from __future__ import annotations

import json
import subprocess

import nbformat
import pytest

pytestmark = pytest.mark.docker
DATA = "city,visits\nLisbon,12\nOslo,30\nLisbon,8\n"
READ = "import pandas as pd\ndf = pd.read_csv('data/visits.csv')"


def _notebook(cells, counts=None, outputs=None):
    """Markdown strings start with '#'; code cells get counts 1, 2, ... unless given, and outputs per index."""
    notebook = nbformat.v4.new_notebook()
    count = 0
    for index, source in enumerate(cells):
        if source.startswith("#"):
            notebook.cells.append(nbformat.v4.new_markdown_cell(source))
            continue
        count += 1
        cell = nbformat.v4.new_code_cell(source, execution_count=(counts or {}).get(index, count))
        cell.outputs = [nbformat.from_dict(o) for o in (outputs or {}).get(index, [])]
        notebook.cells.append(cell)
    return nbformat.writes(notebook)


def _result(text):
    return [{"output_type": "execute_result", "execution_count": 2, "metadata": {}, "data": {"text/plain": text}}]


NOTEBOOKS = {
    "analysis/good.ipynb": _notebook([READ, "# How many visits did Lisbon get?",
                                      "int(df[df.city == 'Lisbon'].visits.sum())"], outputs={2: _result("20")}),
    "unexecuted.ipynb": _notebook([READ, "# q", "df.visits.sum()"], counts={2: None}, outputs={2: _result("50")}),
    "out_of_order.ipynb": _notebook([READ, "# q", "df.visits.sum()"], counts={0: 5, 2: 2},
                                    outputs={2: _result("50")}),
    "errors.ipynb": _notebook([READ, "# q", "df.nope"], outputs={2: [{"output_type": "error", "ename": "E",
                                                                       "evalue": "x", "traceback": []}]}),
    "network.ipynb": _notebook(["import requests\nr = requests.get('https://example.org')", "# q", "r.status_code"],
                               outputs={2: _result("200")}),
    "gpu.ipynb": _notebook(["import torch\nx = torch.ones(2).to('cuda')", "# q", "x.sum()"],
                           outputs={2: _result("2")}),
    "famous.ipynb": _notebook(["import seaborn as sns\ndf = sns.load_dataset('titanic')", "# q", "len(df)"],
                              outputs={2: _result("891")}),
    "missing.ipynb": _notebook(["import pandas as pd\ndf = pd.read_csv('gone.csv')", "# q", "len(df)"],
                               outputs={2: _result("3")}),
    "analysis/stale.ipynb": _notebook([READ, "# Total visits?", "int(df.visits.sum())"], outputs={2: _result("49")}),
}


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
