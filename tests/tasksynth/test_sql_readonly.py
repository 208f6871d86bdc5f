"""`tasksynth sql` reads the store and nothing else: every way out of that is refused with one clear line, and
the store is the same file afterwards."""

import json

import pytest

from tasksynth.hashing import sha256_bytes


@pytest.fixture
def made_store(config):
    from tasksynth.store import open_store

    with open_store(config) as store:
        store.insert("flow_runs", [{"run_id": "r1", "flow": "demo", "status": "completed"}])
    return config.store_path


ESCAPES = {
    "copy_over_the_store": "COPY (SELECT 1 AS x) TO '{store}' (FORMAT csv)",
    "copy_to_a_file": "COPY flow_runs TO '{tmp}/out.csv'",
    "read_a_system_file": "SELECT * FROM read_csv('/etc/passwd')",
    "read_a_text_file": "SELECT * FROM read_text('/etc/hostname')",
    "install_an_extension": "INSTALL httpfs",
    "load_an_extension": "LOAD spatial",
    "attach_a_database": "ATTACH '{tmp}/other.duckdb' AS other",
    "network": "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "unlock_external_access": "SET enable_external_access = true",
    "unlock_configuration": "SET lock_configuration = false",
    "ddl": "CREATE TABLE sneaky (x INTEGER)",
    "dml": "DELETE FROM flow_runs",
}


@pytest.mark.parametrize("name", list(ESCAPES))
def test_each_escape_is_refused_in_one_line(name, made_store, tmp_path, tasksynth):
    before = sha256_bytes(made_store.read_bytes())
    query = ESCAPES[name].format(store=made_store, tmp=tmp_path)
    result = tasksynth("sql", query, cwd=tmp_path)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith("error: refused: `tasksynth sql` reads the store only"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sha256_bytes(made_store.read_bytes()) == before
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_reads_still_work(made_store, tmp_path, tasksynth):
    rows = tasksynth("sql", "--json", "SELECT run_id, status FROM flow_runs", cwd=tmp_path, check=True)
    assert json.loads(rows.stdout) == [{"run_id": "r1", "status": "completed"}]


def test_missing_store_is_refused_and_not_created(home, tmp_path, tasksynth, config):
    result = tasksynth("sql", "SELECT 1", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: no store at ")
    assert not config.store_path.exists()


def test_full_text_search_still_works_read_only(config, tmp_path, tasksynth):
    from tasksynth.store import open_store

    with open_store(config) as store:
        store.load_extension("fts")
        store.execute("CREATE TABLE docs (id INTEGER, body VARCHAR)")
        store.execute("INSERT INTO docs VALUES (1, 'sparse attention indexer'), (2, 'docker images')")
        store.execute("PRAGMA create_fts_index('docs', 'id', 'body')")
    result = tasksynth("sql", "--json", "SELECT id FROM (SELECT id, fts_main_docs.match_bm25(id, 'indexer') AS s "
                       "FROM docs) WHERE s IS NOT NULL", cwd=tmp_path, check=True)
    assert json.loads(result.stdout) == [{"id": 1}]
