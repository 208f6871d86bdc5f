"""Datasets from installed packages and a user's folder, and reading what the task-writing agents reply."""

from __future__ import annotations

import hashlib
import json

import pytest

from notebook_env.datasets import materialise
from notebook_env.errors import NotebookEnvError
from notebook_env.synthesis import parse_code, parse_written_task


def test_packaged_tables_and_a_folder_are_copied_with_their_hashes(config, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "Shop Sales.csv").write_text("a,b\n1,2\n")
    (folder / "notes.txt").write_text("not a table")
    penguins, shop = materialise(config, ["penguins"], folder=folder)
    copied = config.home_path / "notebook" / "data" / "penguins" / "penguins.csv"
    assert penguins.files == {"penguins.csv": hashlib.sha256(copied.read_bytes()).hexdigest()}
    assert copied.read_text().startswith("species,island,bill_length_mm")
    assert oct(copied.stat().st_mode & 0o777) == "0o644"  # the kernel's uid reads it as "other"
    assert penguins.paths_in_kernel() == ["/data/penguins/penguins.csv"]
    assert "CC0" in penguins.license and "species,island" in penguins.preview
    assert shop.name == "shop-sales" and list(shop.files) == ["Shop Sales.csv"]
    with pytest.raises(NotebookEnvError, match="unknown dataset iris2; known: airports"):
        materialise(config, ["iris2"])


def test_the_writers_reply_is_read_leniently_and_refused_when_incomplete():
    task = {"question": "Mean bill length?", "answer_format": {"type": "number", "decimals": 1},
            "solution": "answer = 1"}
    parsed = parse_written_task(f"Here it is:\n```json\n{json.dumps(task)}\n```")
    assert parsed and parsed.answer_format == {"type": "number", "decimals": 1} and parsed.solution == "answer = 1"
    assert parse_written_task(json.dumps({**task, "answer_format": json.dumps(task["answer_format"])}))
    assert parse_written_task(json.dumps({**task, "answer_format": {"type": "essay"}})) is None
    assert parse_written_task(json.dumps({**task, "solution": ""})) is None
    assert parse_written_task("I could not think of a question.") is None
    assert parse_code("Done.\n```python\nanswer = 2\n```") == "answer = 2\n"
    assert parse_code('{"solution": "answer = 3"}') == "answer = 3"
    assert parse_code("no code here") is None
