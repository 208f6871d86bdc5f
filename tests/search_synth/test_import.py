"""`tasksynth search import FILE.jsonl`: bad lines reported with their numbers, accuracy with and without
search measured over k samples each, items kept only where search helps by the margin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

from corpus_fixtures import make_corpus  # noqa: E402
from pipeline_script import DOCUMENTS, write_config  # noqa: E402
from scripted_server import ScriptedServer, reply  # noqa: E402

from search_synth.importing import read_import_file  # noqa: E402
from tasksynth.config import load_config  # noqa: E402
from tasksynth.store import open_store  # noqa: E402

LINES = [
    json.dumps({"id": "needs-search", "question": "Where was the founder of Karsk Abbey born?", "answer": "Marrow"}),
    "{not json",
    json.dumps({"id": "memorised", "question": "What is the capital of France?", "answer": ["Paris", "Paris, France"]}),
    json.dumps({"question": "An item with no answer"}),
    "",
    json.dumps({"id": "memorised", "question": "Again?", "answer": "x"}),
]


def script(body):
    with_search = bool(body.get("tools"))
    question = body["messages"][-1]["content"]
    if body["model"] == "grader":
        return reply('{"grade": "incorrect"}')
    if "France" in question:
        return reply("Answer: Paris")
    return reply("Answer: Marrow" if with_search else "I don't know.")


def test_import_reports_bad_lines_and_keeps_items_search_helps(tmp_path, monkeypatch, tasksynth):
    source = tmp_path / "qa.jsonl"
    source.write_text("\n".join(LINES) + "\n")
    items, problems = read_import_file(source)
    assert [i.item_id for i in items] == ["import-needs-search", "import-memorised"]
    assert problems == ["line 2: not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))",
                        'line 4: no "answer" (a non-empty string or a list of aliases)',
                        "line 6: id 'memorised' repeats an earlier line"]

    monkeypatch.chdir(tmp_path)
    with ScriptedServer(script) as server:
        config = load_config(write_config(tmp_path / "tasksynth.toml", tmp_path / "home", server.base_url))
        make_corpus(config, "valley", DOCUMENTS)
        result = tasksynth("search", "import", str(source), "-k", "2", "--margin", "0.5", cwd=tmp_path,
                           env={"TASKSYNTH_HOME": ""})
        assert result.returncode == 0, result.stderr
        assert len(server.requests) == 2 * 2 * 2  # two items, two samples with search and two without
        from flows.registry import run_flow

        again = run_flow(config, "search-import", {"path": str(source), "samples": 2, "margin": 0.5})
        assert again["import"]["already_done"] == 2 and len(server.requests) == 8  # measured once

    assert "line 2: not JSON" in result.stderr and "line 6: id 'memorised'" in result.stderr
    assert "1 of 2 items kept; 3 bad lines" in result.stdout
    with open_store(config, read_only=True) as store:
        rows = {r["item_id"]: r for r in store.query("SELECT * FROM search_items")}
        discards = store.query("SELECT item, reason FROM discards WHERE stage = 'search.import'")
    kept, memorised = rows["import-needs-search"], rows["import-memorised"]
    assert (kept["accepted"], kept["accuracy_with_search"], kept["accuracy_without_search"]) == (True, 1.0, 0.0)
    assert (memorised["accepted"], memorised["accuracy_with_search"], memorised["accuracy_without_search"]) == \
        (False, 1.0, 1.0)
    assert memorised["answer"] == "Paris | Paris, France" and kept["source"] == "import"
    assert discards == [{"item": "import-memorised", "reason": "no_search_gain"}]
