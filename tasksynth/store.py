"""The one DuckDB store: numbered migrations, row helpers keyed by content hashes, and compressed blobs.

DuckDB lets one process write a database file at a time. The flow process is that writer; Prefect tasks
return records and the flow writes them, so tasks may run in other processes (Dask) without touching the
file. A second process that opens the store while a writer holds it gets `StoreLocked`, one clear line.

A store opened with `sandboxed=True` (what `tasksynth sql` uses) is read-only and cut off from everything but
the store: DuckDB's external access is off (no COPY ... TO, no reading other files, no ATTACH, no network,
no INSTALL/LOAD) and its configuration is locked, so a query cannot turn those back on. The extensions that
queries need (full-text search) are loaded before the lock.

Migrations run with a zero checkpoint threshold, so each migration's commit is written straight into the
database file instead of the write-ahead log: DuckDB 1.5 cannot replay some DDL from the log (`ALTER TABLE ...
ADD COLUMN` on a table whose defaults call functions fails with "Failure while replaying WAL file ...
GetDefaultDatabase"), and a migration killed after its commit would leave a store that does not open.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import zstandard

from tasksynth import sql_literals
from tasksynth.errors import StoreError, StoreLocked
from tasksynth.hashing import sha256_bytes

if TYPE_CHECKING:
    import pyarrow as pa

MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_LOCK_PID = re.compile(r"PID (\d+)")
# Extensions a query may need (the search pipeline's BM25 indexes); loaded, when installed, before a sandboxed
# store locks its configuration.
QUERY_EXTENSIONS = ("fts",)
# At most this many rows go into one insert as literals (see Store.insert); more go in as an Arrow table.
LITERAL_INSERT_ROWS = 64
# Tests only: the migration version after whose commit the process kills itself, to test recovery.
_KILL_AFTER_MIGRATION = "TASKSYNTH_TEST_KILL_AFTER_MIGRATION"


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    found = []
    for entry in resources.files("tasksynth.migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    return sorted(found)


class Store:
    """A connection to the store file. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path, *, read_only: bool = False, blobs_dir: str | Path | None = None,
                 sandboxed: bool = False):
        self.path = Path(path)
        self.read_only = read_only = read_only or sandboxed
        self.blobs_dir = Path(blobs_dir) if blobs_dir else self.path.parent / "blobs"
        self._lock = threading.RLock()
        self._depth = 0
        self._primary_keys: dict[str, list[str]] = {}
        if read_only and not self.path.exists():
            raise StoreError(f"no store at {self.path}; run a flow (or `tasksynth demo`) to create it")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False} if sandboxed else {}
        try:
            self._conn = duckdb.connect(str(self.path), read_only=read_only, config=config)
        except duckdb.IOException as exc:
            raise _locked_or_error(self.path, exc) from None
        if sandboxed:
            self._seal()
        if not read_only:
            self.migrate()

    def _seal(self) -> None:
        indexed = self._conn.execute("SELECT count(*) FROM duckdb_schemas() WHERE schema_name LIKE 'fts_main_%'")
        if indexed.fetchone()[0]:  # loading costs ~0.1 s: only for a store that has full-text indexes
            for name in QUERY_EXTENSIONS:
                with contextlib.suppress(StoreError):
                    self.load_extension(name)
        self._conn.execute("SET enable_external_access = false")
        self._conn.execute("SET allow_community_extensions = false")
        self._conn.execute("SET lock_configuration = true")

    # ------------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def migrate(self) -> list[int]:
        """Apply the migrations not yet applied, each in its own transaction; returns the versions applied."""
        with self._lock:
            self._conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
                applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)""")
            done = {row[0] for row in self._conn.execute("SELECT version FROM schema_migrations").fetchall()}
            pending = [m for m in migrations() if m[0] not in done]
            self._primary_keys.clear()
            if not pending:
                return []
            # Each commit checkpoints (see the module docstring): there is no moment between a migration's
            # commit and its checkpoint at which a crash leaves DDL in the WAL.
            self._conn.execute("CHECKPOINT")
            self._conn.execute("SET checkpoint_threshold = '0b'")
            try:
                for version, name, sql in pending:
                    with self.transaction():
                        self._conn.execute(sql)
                        self._conn.execute(*_statement("INSERT INTO schema_migrations (version, name) "
                                                       "VALUES (?, ?)", [version, name]))
                    if os.environ.get(_KILL_AFTER_MIGRATION) == str(version):
                        os.kill(os.getpid(), signal.SIGKILL)
            finally:
                self._conn.execute("RESET checkpoint_threshold")
            return [m[0] for m in pending]

    def schema_version(self) -> int:
        rows = self.query("SELECT max(version) AS v FROM schema_migrations")
        return rows[0]["v"] or 0

    # ------------------------------------------------------------------------------------------ queries

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing; nested uses join the outermost transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._conn.execute("BEGIN TRANSACTION")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")
            finally:
                self._depth = 0

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> None:
        with self._lock:
            self._conn.execute(*_statement(sql, params))

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts; DuckDB lists stay Python lists and JSON columns are decoded."""
        with self._lock:
            cursor = self._conn.execute(*_statement(sql, params))
            columns = [d[0] for d in cursor.description or []]
            json_columns = {d[0] for d in cursor.description or [] if str(d[1]).upper() == "JSON"}
            rows = cursor.fetchall()
        return [{c: (_decode_json(v) if c in json_columns else v) for c, v in zip(columns, row)} for row in rows]

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None):
        with self._lock:
            return self._conn.execute(*_statement(sql, params)).fetch_arrow_table()

    def insert(self, table: str, rows: Iterable[dict[str, Any]], *, on_conflict: str = "ignore") -> int:
        """Insert rows; with `ignore` a row whose key exists is skipped (a rerun writes nothing twice),
        with `replace` it is overwritten. Returns how many rows were new or replaced.

        The rows go in as one Arrow table and one `INSERT ... SELECT`, and the count is the one DuckDB reports
        for that statement: no per-row statements, no count of the table. A few rows of plain values go in as
        literals instead (`VALUES ...`, the same statement otherwise): handing DuckDB an Arrow table costs a
        pandas import in a process that has not paid it yet (tasksynth/sql_literals.py). With `ignore`, rows whose primary
        key is already stored are left out by an anti-join first: DuckDB's own conflict check is slow when
        most rows conflict on a table with several unique constraints (a rerun of a large mine)."""
        rows = list(rows)
        if not rows:
            return 0
        columns = list(rows[0])
        verb = {"ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE", "error": "INSERT"}[on_conflict]
        key = self._primary_key(table)
        key = key if all(k in rows[0] for k in key) else []
        if on_conflict == "replace" and key:
            # One statement cannot replace a row twice: the last row per key wins, as one after the other.
            rows = list({tuple(_encode(row.get(k)) for k in key): row for row in rows}.values())
        view = f"_insert_{threading.get_ident()}"
        names = ", ".join(_ident(c) for c in columns)
        literal_rows = _literal_rows(rows, columns)
        source = f"({literal_rows}) AS {view}({names})" if literal_rows else view
        sql = f"{verb} INTO {_ident(table)} ({names}) SELECT {names} FROM {source}"
        if on_conflict == "ignore" and key:
            sql += (f" WHERE NOT EXISTS (SELECT 1 FROM {_ident(table)} stored WHERE "
                    + " AND ".join(f"stored.{_ident(k)} = {view}.{_ident(k)}" for k in key) + ")")
        with self._lock:
            if literal_rows:
                with self.transaction():
                    return self._conn.execute(sql).fetchone()[0]
            import pyarrow as pa  # only here: a short command that never gets here does not load it (~0.2 s)

            batch = pa.table({c: _arrow_column([_encode(row.get(c)) for row in rows]) for c in columns})
            self._conn.register(view, batch)
            try:
                with self.transaction():
                    changed = self._conn.execute(sql).fetchone()[0]
            finally:
                self._conn.unregister(view)
        return changed

    def _primary_key(self, table: str) -> list[str]:
        if table not in self._primary_keys:
            with self._lock:
                found = self._conn.execute(*_statement(
                    "SELECT constraint_column_names FROM duckdb_constraints() WHERE schema_name = 'main' "
                    "AND table_name = ? AND constraint_type = 'PRIMARY KEY'", [table])).fetchone()
            self._primary_keys[table] = list(found[0]) if found else []
        return self._primary_keys[table]

    def exists(self, table: str, **where: Any) -> bool:
        clause = " AND ".join(f"{_ident(k)} = ?" for k in where)
        with self._lock:
            row = self._conn.execute(*_statement(f"SELECT 1 FROM {_ident(table)} WHERE {clause} LIMIT 1",
                                                 list(where.values()))).fetchone()
        return row is not None

    def load_extension(self, name: str) -> None:
        """Load a DuckDB extension shipped as a PyPI package (`duckdb-extension-<name>`), with no network."""
        try:
            package = importlib.import_module(f"duckdb_extension_{name}")
        except ImportError:
            raise StoreError(f"the DuckDB extension {name!r} is not installed: pip install duckdb-extension-{name}") from None
        root = Path(package.__file__).parent / "extensions" / f"v{duckdb.__version__}"
        files = sorted(root.glob(f"{name}.duckdb_extension"))
        if not files:
            raise StoreError(f"duckdb-extension-{name} has no build for DuckDB {duckdb.__version__} under {root}")
        with self._lock:
            self._conn.execute(f"INSTALL '{files[0]}'")
            self._conn.execute(f"LOAD {name}")

    # ------------------------------------------------------------------------------------------ steps

    def finished_step(self, step: str, key: str) -> Any | None:
        """The stored output of a finished step, or None when it has not finished."""
        rows = self.query("SELECT output FROM steps WHERE step = ? AND key = ?", [step, key])
        return rows[0]["output"] if rows else None

    def finish_step(self, step: str, key: str, output: Any, run_id: str | None = None) -> None:
        self.insert("steps", [{"step": step, "key": key, "output": output, "run_id": run_id}])

    # ------------------------------------------------------------------------------------------ blobs

    def put_blob(self, data: bytes | str, media_type: str = "text/plain") -> str:
        """Store compressed bytes under the blobs directory; the file is complete before its row exists."""
        raw = data.encode() if isinstance(data, str) else data
        digest = sha256_bytes(raw)
        path = self._blob_path(digest)
        if not path.exists():
            compressed = zstandard.ZstdCompressor(level=9).compress(raw)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(compressed)
            os.replace(tmp, path)
        if not self.read_only:
            self.insert("blobs", [{"sha256": digest, "bytes": len(raw),
                                   "compressed_bytes": path.stat().st_size, "media_type": media_type}])
        return digest

    def get_blob(self, digest: str) -> bytes:
        path = self._blob_path(digest)
        if not path.exists():
            raise StoreError(f"blob {digest} is missing from {self.blobs_dir}")
        return zstandard.ZstdDecompressor().decompress(path.read_bytes())

    def get_text(self, digest: str | None) -> str:
        return self.get_blob(digest).decode(errors="replace") if digest else ""

    def _blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest[:2] / f"{digest}.zst"


def open_store(config, *, read_only: bool = False, sandboxed: bool = False) -> Store:
    """The configured store (`config` is a `tasksynth.config.Config`)."""
    return Store(config.store_path, read_only=read_only, blobs_dir=config.home_path / "blobs", sandboxed=sandboxed)


def _locked_or_error(path: Path, exc: Exception) -> Exception:
    text = str(exc)
    if "lock" in text.lower():
        pid = _LOCK_PID.search(text)
        holder = f" (PID {pid.group(1)})" if pid else ""
        return StoreLocked(f"the store {path} is in use by another process{holder}: DuckDB allows one "
                           "writer at a time; wait for that flow to finish, or stop it")
    return StoreError(f"cannot open the store {path}: {text}")


def _statement(sql: str, params: Sequence[Any] | dict[str, Any] | None) -> tuple[str, Any]:
    """(sql, params) for DuckDB: the parameters written in as literals where that is exact (no conversion of
    Python objects, so no pandas import: tasksynth/sql_literals.py), else bound."""
    if params:
        inlined = sql_literals.inline(sql, params)
        if inlined is not None:
            return inlined, None
    return sql, params


def _literal_rows(rows: list[dict[str, Any]], columns: list[str]) -> str | None:
    """`VALUES (...), ...` of a few rows of plain values, or None (too many rows, or a value with no literal)."""
    if len(rows) > LITERAL_INSERT_ROWS:
        return None
    values = []
    for row in rows:
        literals = [sql_literals.literal(_encode(row.get(c))) for c in columns]
        if None in literals:
            return None
        values.append(f"({', '.join(literals)})")
    return "VALUES " + ", ".join(values)


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise StoreError(f"not a valid identifier: {name!r}")
    return f'"{name}"'


def _encode(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return json.dumps(value, default=str)
    return value


def _arrow_column(values: list[Any]) -> pa.Array:
    """One column of an insert. Values Arrow cannot type as one column (an int beside a string) go in as text,
    which DuckDB casts to the column's type as it would a parameter."""
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def _decode_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
