import os
import signal
import subprocess
import sys

import pytest

from tasksynth.errors import StoreLocked
from tasksynth.store import Store, migrations


def test_migrations_are_numbered_and_applied_once(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as store:
        assert store.schema_version() == migrations()[-1][0]
    with Store(path) as store:
        assert store.migrate() == []


def test_insert_ignore_writes_nothing_twice(store):
    row = {"step": "s", "key": "k", "output": {"a": [1, 2]}}
    assert store.insert("steps", [row]) == 1
    assert store.insert("steps", [row]) == 0
    assert store.finished_step("s", "k") == {"a": [1, 2]}


def test_failed_transaction_leaves_nothing(store):
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.insert("steps", [{"step": "s", "key": "1", "output": None}])
            raise RuntimeError("crash in the middle")
    assert store.query("select count(*) as n from steps")[0]["n"] == 0


def test_lists_stay_lists(store):
    store.insert("code_tasks", [{"instance_id": "i", "candidate_id": "c", "repo": "r", "base_commit": "b",
                                 "verdict": "valid", "fail_to_pass": ["t::a", "t::b"]}])
    assert store.query("select fail_to_pass from code_tasks")[0]["fail_to_pass"] == ["t::a", "t::b"]


def test_blobs_round_trip_compressed(store):
    text = "line of a build log\n" * 1000
    digest = store.put_blob(text)
    assert store.get_text(digest) == text
    row = store.query("select bytes, compressed_bytes from blobs where sha256 = ?", [digest])[0]
    assert row["compressed_bytes"] < row["bytes"] / 10


def test_second_writer_gets_a_clear_error(tmp_path):
    path = tmp_path / "s.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from tasksynth.store import Store
s = Store({str(path)!r})
print("ready", flush=True)
time.sleep(30)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(StoreLocked, match=rf"in use by another process \(PID {holder.pid}\)"):
            Store(path)
    finally:
        holder.kill()
        holder.wait()


def test_fts_extension_loads_offline(store):
    store.load_extension("fts")
    store.execute("create table docs (id integer, body varchar)")
    store.execute("insert into docs values (1, 'sparse attention indexer'), (2, 'docker images')")
    store.execute("pragma create_fts_index('docs', 'id', 'body')")
    hits = store.query("select id from (select id, fts_main_docs.match_bm25(id, 'indexer') as score from docs) "
                       "where score is not null")
    assert [h["id"] for h in hits] == [1]


def test_migration_killed_after_its_commit_leaves_a_store_that_opens(tmp_path):
    """DuckDB cannot replay `ALTER TABLE ... ADD COLUMN` from its WAL on a table whose defaults call functions:
    a migration killed between its commit and a checkpoint used to leave a store that would not open."""
    path = tmp_path / "s.duckdb"
    newest = migrations()[-1][0]
    altering = [v for v, _, sql in migrations() if "ALTER TABLE" in sql][-1]
    # A store one migration short of the newest (that one alters a table), as an upgrade finds it.
    subprocess.run([sys.executable, "-c", f"""
import tasksynth.store as store_module
shipped = store_module.migrations()
store_module.migrations = lambda: [m for m in shipped if m[0] < {altering}]
store_module.Store({str(path)!r}).close()
"""], check=True, timeout=120)
    killed = subprocess.run([sys.executable, "-c", f"from tasksynth.store import Store; Store({str(path)!r})"],
                            env={**os.environ, "TASKSYNTH_TEST_KILL_AFTER_MIGRATION": str(altering)},
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with Store(path) as store:  # opens, and finishes what the killed upgrade left
        assert store.schema_version() == newest
        assert store.query("select count(*) as n from schema_migrations where version = ?", [altering])[0]["n"] == 1


def test_bulk_insert_counts_new_and_replaced_rows(store):
    rows = [{"step": "s", "key": str(i), "output": {"i": i}} for i in range(500)]
    assert store.insert("steps", rows) == 500
    assert store.insert("steps", rows[:10] + [{"step": "s", "key": "new", "output": None}]) == 1  # 10 known
    replaced = store.insert("steps", [{"step": "s", "key": "1", "output": {"v": 1}},
                                      {"step": "s", "key": "1", "output": {"v": 2}},  # the last one wins
                                      {"step": "s", "key": "2", "output": [{"a": 1}]}], on_conflict="replace")
    assert replaced == 2
    assert store.finished_step("s", "1") == {"v": 2} and store.finished_step("s", "2") == [{"a": 1}]
    with pytest.raises(Exception, match="(?i)duplicate key"):
        store.insert("steps", [{"step": "s", "key": "3", "output": None}], on_conflict="error")
    assert store.query("select count(*) as n from steps")[0]["n"] == 501


def test_a_column_arrow_cannot_type_goes_in_as_text_and_is_cast(store):
    store.execute("create table mixed (k varchar primary key, n bigint, tags varchar[])")
    assert store.insert("mixed", [{"k": "a", "n": 1, "tags": []}, {"k": "b", "n": "2", "tags": ["x"]}]) == 2
    assert store.query("select k, n, tags from mixed order by k") == [{"k": "a", "n": 1, "tags": []},
                                                                      {"k": "b", "n": 2, "tags": ["x"]}]
