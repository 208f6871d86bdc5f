"""Parameters written into SQL as literals give what DuckDB's binding gives (value and type), only where that is
exact; and the store's short statements then never make DuckDB import pandas."""

import math
import subprocess
import sys

import duckdb
import pytest

from tasksynth import store as store_module
from tasksynth.sql_literals import inline, literal
from tasksynth.store import Store

TRICKY_STRINGS = ["", "plain", "it's", "''", 'say "hi"', "line\nbreak\ttab", "é 中 🙂", "?", "-- not a comment",
                  "/* nor this */", "back\\slash", "100%", "$1"]
VALUES = [None, True, False, 0, -5, 2**31, 2**62, -2**63, 2**63 - 1, 1.5, -0.1, 1e300, 5e-324, -0.0, *TRICKY_STRINGS]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_literal_reads_back_as_the_bound_parameter_with_the_same_type(value):
    conn = duckdb.connect()
    text = literal(value)
    assert text is not None
    as_literal = conn.execute(f"SELECT {text}, typeof({text})").fetchone()
    bound = conn.execute("SELECT ?, typeof(?)", [value, value]).fetchone()
    assert as_literal == bound
    if isinstance(value, float):
        assert math.copysign(1, as_literal[0]) == math.copysign(1, value)


@pytest.mark.parametrize("value", [b"bytes", [1, 2], {"a": 1}, math.nan, math.inf, 2**63, -2**63 - 1, "nul\x00",
                                   "lone \ud800 surrogate", object()], ids=repr)
def test_values_without_an_exact_literal_are_left_to_the_binding(value):
    assert literal(value) is None
    assert inline("SELECT ?", [value]) is None


def test_only_placeholders_outside_quotes_and_comments_are_replaced():
    sql = "SELECT '?' AS \"b?\", ? AS c -- ?\n, /* ? */ ? AS d, 'it''s ?' AS e"
    inlined = inline(sql, ["x", 2])
    assert inlined == "SELECT '?' AS \"b?\", 'x' AS c -- ?\n, /* ? */ 2 AS d, 'it''s ?' AS e"
    cursor = duckdb.connect().execute(inlined)
    assert cursor.fetchone() == ("?", "x", 2, "it's ?") and cursor.description[0][0] == "b?"


@pytest.mark.parametrize("sql, params", [
    ("SELECT ?, ?", ["one"]),              # fewer parameters than placeholders
    ("SELECT ?", ["one", "two"]),          # more
    ("SELECT $1", ["one"]),                # numbered placeholders
    ("SELECT ?1", ["one"]),
    ("SELECT $name", {"name": "one"}),     # named
    ("SELECT 'unterminated ?", ["one"]),
    ("SELECT E'\\'?'", ["one"]),           # escape strings
])
def test_statements_it_cannot_read_with_certainty_are_left_to_the_binding(sql, params):
    assert inline(sql, params) is None


def test_store_statements_with_tricky_parameters_read_and_write_as_bound_ones(tmp_path):
    with Store(tmp_path / "s.duckdb") as store:
        store.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, n BIGINT, x DOUBLE, b BOOLEAN, j JSON)")
        for i, text in enumerate(TRICKY_STRINGS):
            store.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?)", [text, i, i / 3, i % 2 == 0, None])
        assert [r["k"] for r in store.query("SELECT k FROM t ORDER BY n")] == TRICKY_STRINGS
        for i, text in enumerate(TRICKY_STRINGS):
            assert store.query("SELECT n, x FROM t WHERE k = ? AND b = ?", [text, i % 2 == 0]) == [
                {"n": i, "x": i / 3}]
            assert store.exists("t", k=text, n=i)


def test_a_few_rows_inserted_as_literals_store_what_an_arrow_insert_stores(tmp_path, monkeypatch):
    rows = [{"k": text, "n": i, "x": i / 7, "b": i % 3 == 0, "j": {"text": text, "i": [i, None]},
             "seen_at": "2024-02-29 12:34:56.789" if i % 2 else None} for i, text in enumerate(TRICKY_STRINGS)]
    rows.append({"k": "mixed", "n": "7", "x": 3, "b": None, "j": [{"a": 1}], "seen_at": None})
    stored = {}
    for how, limit in (("literals", store_module.LITERAL_INSERT_ROWS), ("arrow", 0)):
        monkeypatch.setattr(store_module, "LITERAL_INSERT_ROWS", limit)
        with Store(tmp_path / f"{how}.duckdb") as store:
            store.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, n BIGINT, x DOUBLE, b BOOLEAN, j JSON, "
                          "seen_at TIMESTAMP)")
            first = store.insert("t", rows)
            again = store.insert("t", rows[:3])  # already there: ignored
            replaced = store.insert("t", [{**rows[0], "n": 99}, {**rows[0], "n": 100}], on_conflict="replace")
            stored[how] = (first, again, replaced, store.query("SELECT * FROM t ORDER BY k"))
    assert stored["literals"] == stored["arrow"]
    first, again, replaced, table = stored["literals"]
    assert (first, again, replaced) == (len(rows), 0, 1) and len(table) == len(rows)


def test_a_flow_commands_store_work_does_not_import_pandas(tmp_path):
    probe = ("import sys\n"
             "from tasksynth.store import Store\n"
             f"with Store({str(tmp_path / 's.duckdb')!r}) as store:\n"
             "    store.insert('flow_runs', [{'run_id': 'r', 'flow': 'code', 'params': {'git': ['x']},\n"
             "                               'status': 'running', 'pid': 1, 'process_started': '1'}])\n"
             "    store.execute('UPDATE flow_runs SET status = ? WHERE run_id = ?', ['completed', 'r'])\n"
             "    assert store.finished_step('mine', 'k') is None\n"
             "    assert store.query('SELECT status FROM flow_runs WHERE run_id = ?', ['r']) == "
             "[{'status': 'completed'}]\n"
             "print('pandas' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
