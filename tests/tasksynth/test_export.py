import hashlib
import json

import pyarrow.parquet as pq
import pytest

from tasksynth.errors import ExportError
from tasksynth.export import TASK_SCHEMA, export_tasks


def _fill(store, code=5, search=2, general=1):
    for i in range(code):
        store.insert("candidates", [{"candidate_id": f"c{i}", "source": "git", "instance_id": f"demo-{i}",
                                     "repo": "demo/calc", "base_commit": "abc", "patch": "diff --git a/x b/x\n",
                                     "test_patch": "diff --git a/t b/t\n", "problem_statement": f"bug {i}"}])
        store.insert("code_tasks", [{"instance_id": f"demo-{i}", "candidate_id": f"c{i}", "repo": "demo/calc",
                                     "base_commit": "abc", "image": "tasksynth/instance:x",
                                     "verdict": "valid" if i % 5 else "rejected",
                                     "reason": None if i % 5 else "pass_to_fail",
                                     "fail_to_pass": [f"tests/test_a.py::test_{i}"], "pass_to_pass": ["t::p"]}])
    for i in range(search):
        store.insert("search_items", [{"item_id": f"s{i}", "entity": "e", "question": "q?", "answer": "a",
                                       "rubric": {"must": ["a"]}, "verdict": "kept", "accepted": True}])
    bundle = store.path.parent / "bundles" / "b1"  # a tool environment's bundle: copied into the export
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "tools.py").write_text("def book(db, name: str):\n    \"\"\"Book.\"\"\"\n")
    store.insert("general_environments", [{"env_id": "g", "category": "travel", "status": "built", "bundle_id": "b1",
                                           "bundle_path": str(bundle), "tools": [{"name": "book"}]}])
    for i in range(general):
        store.insert("general_tasks", [{"task_id": f"t{i}", "env_id": "g", "bundle_id": "b1", "level": 1,
                                        "prompt": "p", "status": "attempted", "c": 1, "n": 4,
                                        "verifier": "def check_x(state, answer):\n    return True\n",
                                        "accepted": True}])


def test_export_writes_shards_and_an_honest_manifest(store, tmp_path):
    _fill(store)
    out = tmp_path / "out"
    result = export_tasks(store, out, max_shard_rows=2)
    assert result.counts == {"code": 4, "search": 2, "general": 1}  # the rejected code task stays out
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["path"] for s in manifest["shards"] if s["kind"] == "code"] == [
        "code/train-00000-of-00002.parquet", "code/train-00001-of-00002.parquet"]
    assert manifest["totals"] == {"code": 4, "search": 2, "general": 1}
    assert [f["path"] for f in manifest["files"]] == ["general/bundles/b1/tools.py"]
    assert (out / "general/bundles/b1/tools.py").read_text().startswith("def book")
    for shard in manifest["shards"]:
        data = (out / shard["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        table = pq.read_table(out / shard["path"])
        assert table.schema.equals(TASK_SCHEMA, check_metadata=False)
        assert table.num_rows == shard["rows"]
        assert pq.ParquetFile(out / shard["path"]).metadata.row_group(0).column(0).compression == "ZSTD"
    first = pq.read_table(out / "code/train-00000-of-00002.parquet").to_pylist()[0]
    assert first["prompt"][-1] == {"role": "user", "content": "bug 1"}
    assert json.loads(first["verifier"])["fail_to_pass"] == ["tests/test_a.py::test_1"]


def test_all_includes_rejected(store, tmp_path):
    _fill(store)
    assert export_tasks(store, tmp_path / "o", include_all=True, kinds=["code"]).counts == {"code": 5}


def test_datasets_loads_the_export(store, tmp_path):
    datasets = pytest.importorskip("datasets")
    _fill(store)
    export_tasks(store, tmp_path / "out", kinds=["code"])
    loaded = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "code"), split="train")
    assert loaded.num_rows == 4
    assert set(loaded.column_names) >= {"task_id", "kind", "prompt", "environment", "verifier", "metadata"}


def test_refuses_non_empty_dir_unless_overwrite(store, tmp_path):
    _fill(store)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_tasks(store, out)
    export_tasks(store, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "manifest.json").exists()


def test_crash_mid_export_leaves_previous_export_intact(store, tmp_path, monkeypatch):
    _fill(store)
    out = tmp_path / "out"
    export_tasks(store, out)
    before = (out / "manifest.json").read_text()

    import tasksynth.export as export_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setitem(export_module.TASK_READERS, "general", broken)
    with pytest.raises(OSError):
        export_tasks(store, out, overwrite=True)
    assert (out / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_unknown_kind_is_refused(store, tmp_path):
    with pytest.raises(ExportError, match="unknown kind"):
        export_tasks(store, tmp_path / "o", kinds=["video"])
