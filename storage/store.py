"""The store: Parquet parts as the record, DuckDB views as the SQL surface.

Writers never open a DuckDB file: they write a complete Parquet part into ``<root>/tmp/``
and ``os.replace`` it into its table folder, so a crash leaves either the whole part or
nothing, and any number of readers (``moe sql``, the DuckDB CLI on ``catalog.duckdb``)
work while flows write. Readers get an in-memory DuckDB whose views glob the folders.

One writer per store: every writing operation holds ``Store.writer()``, a cross-process
lock (``filelock`` on ``<root>/writer.lock``), re-entrant inside one process so nested
operations (an ingest inside a retrain) do not wait on themselves. Readers never take it.
The first writer to take the lock removes what dead writers left in ``tmp/`` (entries are
named after the writing process' pid) and empty partition folders.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import filelock
import pyarrow as pa
import pyarrow.parquet as pq

from storage.schemas import HIVE_KEY, TABLE_SCHEMAS, VIEW_SQL

__all__ = [
    "Store",
    "StoreBusy",
    "StoreNotFound",
    "DEFAULT_STORE_DIR",
    "STORE_ENV_VAR",
    "LOCK_TIMEOUT_ENV_VAR",
    "resolve_store_root",
]

STORE_ENV_VAR = "MOE_STORE"
DEFAULT_STORE_DIR = "moe_store"
_EMPTY_PART = "_empty.parquet"  # a zero-row part so a view over an empty table has columns
_CATALOG = "catalog.duckdb"
_LOCK_FILE = "writer.lock"
_OWNER_FILE = "writer.owner"
LOCK_TIMEOUT_ENV_VAR = "MOE_WRITER_LOCK_TIMEOUT"
_DEFAULT_LOCK_TIMEOUT_S = 900.0
# tmp/ entries carry the writing process' pid: "<pid>-...", "partition-<pid>-...",
# "retired-<pid>-..."; anything of a dead pid is a crash leftover.
_TMP_OWNER = re.compile(r"^(?:partition-|retired-)?(\d+)-")
# One lock object per lock file per process: two flock()s on one file from one process
# would block each other, and the in-process count makes the lock re-entrant.
_LOCKS: dict[str, tuple[threading.RLock, filelock.FileLock]] = {}
_LOCKS_GUARD = threading.Lock()
_LAYOUT_DIGEST = hashlib.sha256(
    repr((sorted(VIEW_SQL.items()), [(t, str(s)) for t, s in TABLE_SCHEMAS.items()])).encode()
).hexdigest()


def resolve_store_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The store's folder: ``root`` if given, else ``$MOE_STORE``, else ``./moe_store``."""
    chosen = root if root is not None else os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_DIR
    return Path(chosen).expanduser().resolve()


class StoreNotFound(FileNotFoundError):
    """A read-only command was pointed at a folder that holds no store."""


class StoreBusy(TimeoutError):
    """Another process held the store's writer lock for longer than the timeout."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _partition_value(value: str) -> str:
    """``value`` if it is a name a partition folder may carry; reserved and path-like refused."""
    if not value or "/" in value or "\\" in value or value.startswith((".", "_")):
        raise ValueError(
            f"invalid partition value {value!r}: names starting with '.' or '_' are reserved "
            "by the store, and '/' is not allowed"
        )
    return value


class Store:
    """A folder of Parquet tables. Cheap to construct; ``open`` creates the layout."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tables_dir = root / "tables"
        self.tmp_dir = root / "tmp"

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Store:
        """Open (creating if needed) the store at ``resolve_store_root(root)``."""
        store = cls(resolve_store_root(root))
        store._ensure_layout()
        return store

    @classmethod
    def open_existing(cls, root: str | os.PathLike[str] | None = None) -> Store:
        """Open the store at ``resolve_store_root(root)`` without creating anything.

        For read-only commands: a mistyped path says so instead of answering from a new,
        empty store.
        """
        path = resolve_store_root(root)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"store path {path} is a file, not a store folder")
        store = cls(path)
        if not store.tables_dir.is_dir() or not (path / "catalog.version").exists():
            raise StoreNotFound(
                f"no store at {path}: pass --store (or set ${STORE_ENV_VAR}) to an existing "
                "store, or create one with `moe ingest FILE`"
            )
        return store

    # -- the writer lock ------------------------------------------------------------------

    def _locks(self) -> tuple[threading.RLock, filelock.FileLock]:
        path = str(self.root / _LOCK_FILE)
        with _LOCKS_GUARD:
            if path not in _LOCKS:
                # The RLock orders this process' threads; the file lock orders processes.
                _LOCKS[path] = (threading.RLock(), filelock.FileLock(path, thread_local=False))
            return _LOCKS[path]

    @contextmanager
    def writer(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the store's writer lock: one writing thread in one process at a time.

        Re-entrant in the holding thread. Waits up to ``timeout`` seconds (default
        ``$MOE_WRITER_LOCK_TIMEOUT`` or 900), then raises ``StoreBusy`` naming the holder.
        """
        if timeout is None:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV_VAR, _DEFAULT_LOCK_TIMEOUT_S))
        self.root.mkdir(parents=True, exist_ok=True)
        threads, files = self._locks()
        if not threads.acquire(timeout=timeout if timeout >= 0 else -1):
            raise StoreBusy(
                f"another thread of this process is writing to the store {self.root}; "
                f"waited {timeout:g} s"
            )
        try:
            try:
                files.acquire(timeout=timeout)
            except filelock.Timeout as error:
                owner = self.root / _OWNER_FILE
                holder = owner.read_text().strip() if owner.exists() else "unknown"
                raise StoreBusy(
                    f"another process is writing to the store {self.root} (holder: {holder}); "
                    f"wait for it to finish, or raise ${LOCK_TIMEOUT_ENV_VAR} "
                    f"(waited {timeout:g} s)"
                ) from error
            try:
                if files.lock_counter == 1:  # outermost: this process just became the writer
                    owner_line = f"pid {os.getpid()} since {time.ctime()}\n"
                    (self.root / _OWNER_FILE).write_text(owner_line)
                    self.clean_stale()
                yield
            finally:
                files.release()
        finally:
            threads.release()

    def clean_stale(self) -> list[Path]:
        """Remove ``tmp/`` entries of dead writers and empty partition folders.

        Called by the writer holding the lock; returns what was removed.
        """
        removed: list[Path] = []
        if self.tmp_dir.is_dir():
            for entry in self.tmp_dir.iterdir():
                match = _TMP_OWNER.match(entry.name)
                stale = entry.name.startswith("retired-") and match is None  # pid-less, old
                if match is not None and not _pid_alive(int(match.group(1))):
                    stale = True
                if stale:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry)
        for table in HIVE_KEY:
            folder = self.tables_dir / table
            if not folder.is_dir():
                continue
            for partition in folder.iterdir():
                if partition.is_dir() and not any(partition.iterdir()):
                    partition.rmdir()
                    removed.append(partition)
        return removed

    # -- layout ---------------------------------------------------------------------------

    def _layout_complete(self) -> bool:
        stamp = self.root / "catalog.version"
        if not (self.root / _CATALOG).exists() or not stamp.exists():
            return False
        if stamp.read_text() != _LAYOUT_DIGEST or not self.tmp_dir.is_dir():
            return False
        return all((self._empty_part_dir(table) / _EMPTY_PART).exists() for table in TABLE_SCHEMAS)

    def _empty_part_dir(self, table: str) -> Path:
        folder = self.table_dir(table)
        # Hive tables keep theirs in a placeholder partition so every file has the key.
        return folder / f"{HIVE_KEY[table]}=_empty" if table in HIVE_KEY else folder

    def _ensure_layout(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(
                f"store path {self.root} is a file, not a folder: pass --store a folder"
            )
        if self._layout_complete():  # the common case: no write, so no lock
            return
        with self.writer():
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            for table, schema in TABLE_SCHEMAS.items():
                empty = self._empty_part_dir(table)
                empty.mkdir(parents=True, exist_ok=True)
                placeholder = empty / _EMPTY_PART
                # A store made by an older version keeps placeholders of the older schema;
                # rewritten, they give every view the new columns (NULL in older parts).
                if not placeholder.exists() or not pq.read_schema(placeholder).equals(schema):
                    self._write_atomic(schema.empty_table(), placeholder)
            # Rewrite the catalog when the declared views changed (a store made by an older
            # version of this code gains the new views on the next open).
            stamp = self.root / "catalog.version"
            if (
                not (self.root / _CATALOG).exists()
                or not stamp.exists()
                or stamp.read_text() != _LAYOUT_DIGEST
            ):
                self.write_catalog()
                stamp.write_text(_LAYOUT_DIGEST)

    def table_dir(self, table: str) -> Path:
        """Folder of ``table``'s parts; ``table`` must be declared in ``storage.schemas``."""
        if table not in TABLE_SCHEMAS:
            raise KeyError(f"unknown table {table!r}; known: {sorted(TABLE_SCHEMAS)}")
        return self.tables_dir / table

    # -- writing --------------------------------------------------------------------------

    def _write_atomic(self, data: pa.Table, destination: Path, compression: str = "zstd") -> None:
        staging = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
        try:
            pq.write_table(data, staging, compression=compression)
            with open(staging, "rb") as handle:
                os.fsync(handle.fileno())
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, destination)
        finally:
            staging.unlink(missing_ok=True)

    def part_path(
        self, table: str, part_name: str, partition: dict[str, str] | None = None
    ) -> Path:
        """Where part ``part_name`` of ``table`` lives (inside ``key=value`` folders if any)."""
        if not part_name or "/" in part_name or part_name.startswith((".", "_")):
            raise ValueError(f"invalid part name {part_name!r}")
        folder = self.table_dir(table)
        for key, value in (partition or {}).items():
            folder = folder / f"{key}={_partition_value(value)}"
        return folder / f"{part_name}.parquet"

    def has_part(self, table: str, part_name: str, partition: dict[str, str] | None = None) -> bool:
        return self.part_path(table, part_name, partition).exists()

    def write_part(
        self,
        table: str,
        part_name: str,
        data: pa.Table,
        partition: dict[str, str] | None = None,
        compression: str = "zstd",
        *,
        held: bool = False,
    ) -> Path:
        """Write ``data`` as one whole part; replaces a part of the same name (idempotent).

        ``data`` is cast to the table's declared schema, so a wrong column fails here, not
        later in a reader. ``compression="none"`` suits float arrays read back in bulk.
        Takes the writer lock unless ``held``: the caller's operation already holds it from
        another thread of this process (ingest's background part writer).
        """
        schema = TABLE_SCHEMAS[table]
        try:
            data = data.select(schema.names).cast(schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ValueError(
                f"rows for table {table!r} do not match its schema: {error}"
            ) from error
        destination = self.part_path(table, part_name, partition)
        if held:
            self._write_atomic(data, destination, compression)
        else:
            with self.writer():
                self._write_atomic(data, destination, compression)
        return destination

    @contextmanager
    def rewrite_partition(
        self, table: str, partition: dict[str, str]
    ) -> Iterator[Callable[[str, pa.Table], None]]:
        """Write a whole hive partition, then swap it in place of any previous one.

        Yields ``write(part_name, data)``. Parts go to a staging folder under ``tmp/``; only
        when the block finishes is the folder renamed into the table, so a run killed midway
        leaves the previous rows (or none) and a rerun leaves exactly one set.
        """
        schema = TABLE_SCHEMAS[table]
        for value in partition.values():
            _partition_value(value)  # refuse reserved names before any work
        staging = self.tmp_dir / f"partition-{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)

        def write(part_name: str, data: pa.Table) -> None:
            target = self.part_path(table, part_name)  # validates the name
            pq.write_table(data.select(schema.names).cast(schema), staging / target.name)

        try:
            yield write
            final = self.table_dir(table)
            for key, value in partition.items():
                final = final / f"{key}={_partition_value(value)}"
            retired = self.tmp_dir / f"retired-{os.getpid()}-{uuid.uuid4().hex}"
            with self.writer():  # the swap is the write; staging needed no lock
                if final.exists():
                    os.replace(final, retired)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- reading --------------------------------------------------------------------------

    def part_files(self, table: str) -> list[Path]:
        """Every Parquet part of ``table`` now (the files its view reads), sorted."""
        folder = self.table_dir(table)
        pattern = "*/*.parquet" if table in HIVE_KEY else "*.parquet"
        return sorted(folder.glob(pattern))

    def _scan_sql(self, table: str, files: list[Path] | None = None) -> str:
        """``read_parquet`` over the table's folder (globbed at query time) or over ``files``."""
        hive = ", hive_partitioning=true" if table in HIVE_KEY else ""
        if files is not None:
            quoted = ", ".join("'" + f.as_posix().replace("'", "''") + "'" for f in files)
            return f"read_parquet([{quoted}], union_by_name=true{hive})"
        folder = self.table_dir(table).as_posix().replace("'", "''")
        pattern = "**/*.parquet" if table in HIVE_KEY else "*.parquet"
        return f"read_parquet('{folder}/{pattern}', union_by_name=true{hive})"

    def _create_views(
        self,
        connection: duckdb.DuckDBPyConnection,
        files: dict[str, list[Path]] | None = None,
    ) -> None:
        scans = {
            table: self._scan_sql(table, None if files is None else files[table])
            for table in TABLE_SCHEMAS
        }
        for view, body in VIEW_SQL.items():
            # View names and folder paths come from storage.schemas and the store, never users.
            statement = f"CREATE OR REPLACE VIEW {view} AS {body.format(**scans)}"
            connection.execute(statement)

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB with every view; holds no lock on any file."""
        connection = duckdb.connect(":memory:")
        self._create_views(connection)
        return connection

    def write_catalog(self) -> Path:
        """(Re)write ``catalog.duckdb``: the same views, for the DuckDB CLI and notebooks.

        Views hold absolute paths: rerun ``moe store catalog`` after moving the store.
        """
        path = self.root / _CATALOG
        staging = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.duckdb"
        with self.writer():
            connection = duckdb.connect(str(staging))
            try:
                self._create_views(connection)
            finally:
                connection.close()
            os.replace(staging, path)
        return path

    @property
    def catalog_path(self) -> Path:
        return self.root / _CATALOG
