"""Store.insert throughput: rows/s of one bulk insert of candidate-shaped rows into a real store file.

    .venv/bin/python bench/store_insert.py [--rows 100000] [--baseline-rows 100000]

Rows look like mined candidates (a patch and a test patch of a few hundred bytes, a JSON metadata column, a
list column). Runs, each into a fresh store file:
  bulk        Store.insert: one Arrow table, one INSERT ... SELECT, the count DuckDB reports
  bulk rerun  the same rows again (`ignore`): every row already there, nothing written
  baseline    the previous method: one parameterised statement per row (executemany) with count(*) of the
              table before and after, the way Store.insert worked before bulk inserts
The ratio is bulk rows/s over baseline rows/s, measured in the same run. `--baseline-rows` inserts fewer rows
with the baseline when it is too slow to wait for (its rate is per row, so the ratio stays honest).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasksynth.store import Store, _encode, _ident  # noqa: E402


def candidate_rows(count: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + count):
        rows.append({
            "candidate_id": f"cand-{i:08d}", "source": "git", "source_ref": f"{i:040x}",
            "instance_id": f"bench__repo-{i}", "repo": "bench/repo", "repo_url": "/srv/bench/repo",
            "language": "python", "base_commit": f"{i + 1:040x}", "head_commit": f"{i:040x}",
            "patch": f"diff --git a/src/m{i}.py b/src/m{i}.py\n" + "+x = 1\n" * 20,
            "test_patch": f"diff --git a/tests/test_m{i}.py b/tests/test_m{i}.py\n" + "+assert x\n" * 20,
            "problem_statement": f"Fix the thing number {i}: it breaks when the input is empty.",
            "imported_fail_to_pass": [f"tests/test_m{i}.py::test_a", f"tests/test_m{i}.py::test_b"],
            "metadata": {"merge": False, "source_files": [f"src/m{i}.py"], "test_files": [f"tests/test_m{i}.py"]},
        })
    return rows


def baseline_insert(store: Store, table: str, rows: list[dict]) -> int:
    """The previous Store.insert: executemany of one INSERT OR IGNORE per row, count(*) before and after."""
    columns = list(rows[0])
    sql = (f"INSERT OR IGNORE INTO {_ident(table)} ({', '.join(_ident(c) for c in columns)}) "
           f"VALUES ({', '.join('?' for _ in columns)})")
    values = [[_encode(row.get(c)) for c in columns] for row in rows]
    conn = store._conn
    before = conn.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()[0]
    with store.transaction():
        conn.executemany(sql, values)
    return conn.execute(f"SELECT count(*) FROM {_ident(table)}").fetchone()[0] - before


def timed(label: str, fn, rows: list[dict]) -> float:
    started = time.perf_counter()
    written = fn(rows)
    wall = time.perf_counter() - started
    rate = len(rows) / wall
    print(f"{label:<12} {len(rows):>7} rows  {written:>7} written  {wall:8.2f} s  {rate:>10,.0f} rows/s")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=None, help="rows for the baseline (default: --rows)")
    args = parser.parse_args()
    rows = candidate_rows(args.rows)
    baseline_rows = rows[:args.baseline_rows] if args.baseline_rows else rows
    with tempfile.TemporaryDirectory() as tmp:
        with Store(Path(tmp) / "bulk.duckdb") as store:
            bulk = timed("bulk", lambda r: store.insert("candidates", r), rows)
            timed("bulk rerun", lambda r: store.insert("candidates", r), rows)
        with Store(Path(tmp) / "baseline.duckdb") as store:
            base = timed("baseline", lambda r: baseline_insert(store, "candidates", r), baseline_rows)
    print(f"bulk insert: {bulk:,.0f} rows/s vs {base:,.0f} rows/s per-row baseline: {bulk / base:.1f}x")


if __name__ == "__main__":
    main()
