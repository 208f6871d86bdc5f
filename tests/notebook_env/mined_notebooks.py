"""Notebooks for the mining tests: one that a re-run reproduces, and one that fails each filter."""

from __future__ import annotations

import nbformat

DATA = "city,visits\nLisbon,12\nOslo,30\nLisbon,8\n"
READ = "import pandas as pd\ndf = pd.read_csv('data/visits.csv')"


def notebook(cells, counts=None, outputs=None):
    """Markdown strings start with '#'; code cells get counts 1, 2, ... unless given, and outputs per index."""
    built = nbformat.v4.new_notebook()
    count = 0
    for index, source in enumerate(cells):
        if source.startswith("#"):
            built.cells.append(nbformat.v4.new_markdown_cell(source))
            continue
        count += 1
        cell = nbformat.v4.new_code_cell(source, execution_count=(counts or {}).get(index, count))
        cell.outputs = [nbformat.from_dict(o) for o in (outputs or {}).get(index, [])]
        built.cells.append(cell)
    return nbformat.writes(built)


def result(text):
    return [{"output_type": "execute_result", "execution_count": 2, "metadata": {}, "data": {"text/plain": text}}]


NOTEBOOKS = {
    "analysis/good.ipynb": notebook([READ, "# How many visits did Lisbon get?",
                                     "int(df[df.city == 'Lisbon'].visits.sum())"], outputs={2: result("20")}),
    "unexecuted.ipynb": notebook([READ, "# q", "df.visits.sum()"], counts={2: None}, outputs={2: result("50")}),
    "out_of_order.ipynb": notebook([READ, "# q", "df.visits.sum()"], counts={0: 5, 2: 2},
                                   outputs={2: result("50")}),
    "errors.ipynb": notebook([READ, "# q", "df.nope"], outputs={2: [{"output_type": "error", "ename": "E",
                                                                     "evalue": "x", "traceback": []}]}),
    "network.ipynb": notebook(["import requests\nr = requests.get('https://example.org')", "# q", "r.status_code"],
                              outputs={2: result("200")}),
    "gpu.ipynb": notebook(["import torch\nx = torch.ones(2).to('cuda')", "# q", "x.sum()"],
                          outputs={2: result("2")}),
    "famous.ipynb": notebook(["import seaborn as sns\ndf = sns.load_dataset('titanic')", "# q", "len(df)"],
                             outputs={2: result("891")}),
    "missing.ipynb": notebook(["import pandas as pd\ndf = pd.read_csv('gone.csv')", "# q", "len(df)"],
                              outputs={2: result("3")}),
    "analysis/stale.ipynb": notebook([READ, "# Total visits?", "int(df.visits.sum())"], outputs={2: result("49")}),
}
