"""Canonical database state and pass@k: what general tasks are judged and filtered by."""

from __future__ import annotations

import math
import sqlite3

import pytest

from verifiers.pass_at_k import pass_at_k, pass_at_ks
from verifiers.state_hash import canonical_state, state_diff, state_hash


def _world(path, rows, extra_float=0.0):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE bookings (id INTEGER PRIMARY KEY, guest TEXT, total REAL)")
    db.execute("CREATE TABLE notes (body TEXT)")  # no primary key: ordered by all columns
    for row in rows:
        db.execute("INSERT INTO bookings VALUES (?, ?, ?)", (row[0], row[1], row[2] + extra_float))
    db.executemany("INSERT INTO notes VALUES (?)", [("b",), ("a",)] if rows and rows[0][0] == 1 else [("a",), ("b",)])
    db.commit()
    db.close()
    return path


def test_same_state_written_in_another_order_hashes_the_same(tmp_path):
    first = _world(tmp_path / "a.sqlite", [(1, "ana", 10.5), (2, "bo", 3.25)])
    second = _world(tmp_path / "b.sqlite", [(2, "bo", 3.25), (1, "ana", 10.5)], extra_float=1e-9)
    assert state_hash(first) == state_hash(second)
    assert canonical_state(first)["bookings"]["rows"] == [[1, "ana", 10.5], [2, "bo", 3.25]]
    assert canonical_state(first)["notes"]["rows"] == [["a"], ["b"]]


def test_a_changed_row_changes_the_hash_and_the_diff_names_it(tmp_path):
    first = _world(tmp_path / "a.sqlite", [(1, "ana", 10.5)])
    second = _world(tmp_path / "b.sqlite", [(1, "ana", 11.5)])
    assert state_hash(first) != state_hash(second)
    diff = state_diff(canonical_state(first), canonical_state(second))
    assert diff == ['- bookings [1, "ana", 10.5]', '+ bookings [1, "ana", 11.5]']


def test_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no database"):
        state_hash(tmp_path / "nope.sqlite")


@pytest.mark.parametrize("n,c,k", [(100, 0, 1), (100, 1, 1), (100, 1, 100), (10, 3, 2), (200, 7, 8), (5, 5, 3)])
def test_pass_at_k_matches_the_combinatorial_formula(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert pass_at_ks(100, 1, [1, 8, 100]) == {"pass@1": pytest.approx(0.01), "pass@8": pytest.approx(0.08),
                                               "pass@100": 1.0}
    assert pass_at_ks(4, 1, [1, 8]) == {"pass@1": 0.25}  # k above n is left out
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 0)
