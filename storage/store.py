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

A store may also live on object storage, ``s3://bucket/prefix`` (``storage.objectstore``):
parts are staged in a local temporary file and published by one PUT under their final
key, the writer lock is a lease object taken with a conditional PUT, and readers' DuckDB
reads the parts through the same fsspec filesystem, registered on the connection.
``Store.location`` names either kind; ``Store.root`` (a ``Path``) exists only for a
local store, and the few operations that need a local folder say so for an ``s3://`` one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import filelock
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from storage.objectstore import (
    LeaseLost,
    ObjectLease,
    is_object_location,
    normalise_location,
    object_filesystem,
    reader_filesystem,
)
from storage.schemas import COMPACTABLE, HIVE_KEY, REPLACES_KEY, TABLE_SCHEMAS, VIEW_SQL

__all__ = [
    "Store",
    "PartWriter",
    "StoreBusy",
    "StoreNotFound",
    "LocalOnly",
    "LeaseLost",
    "DEFAULT_STORE_DIR",
    "STORE_ENV_VAR",
    "LOCK_TIMEOUT_ENV_VAR",
    "resolve_store_root",
    "resolve_store_location",
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
# The same for object-storage stores: per location, a thread lock, the lease and a depth.
_LEASES: dict[str, tuple[threading.RLock, ObjectLease, list[int]]] = {}
# Columns added to a table after stores existed: a view over an older store's parts (whose
# placeholder was not rewritten yet, e.g. read by `moe sql` before any writer opened it)
# reads them as NULL instead of failing to bind.
_ADDED_COLUMNS: dict[str, dict[str, str]] = {
    "series_versions": {"base_hash": "VARCHAR", "base_points": "INTEGER"},
}
_SCAN_VERSION = 2  # bump when _scan_sql changes: catalog.duckdb holds the scans
_LAYOUT_DIGEST = hashlib.sha256(
    repr(
        (
            sorted(VIEW_SQL.items()),
            [(t, str(s)) for t, s in TABLE_SCHEMAS.items()],
            _SCAN_VERSION,
            COMPACTABLE,
        )
    ).encode()
).hexdigest()


def resolve_store_location(root: str | os.PathLike[str] | None = None) -> str:
    """The store: ``root`` if given, else ``$MOE_STORE``, else ``./moe_store``.

    An ``s3://bucket/prefix`` location is returned normalised; a folder as an absolute path.
    """
    chosen = root if root is not None else os.environ.get(STORE_ENV_VAR) or DEFAULT_STORE_DIR
    if is_object_location(chosen):
        return normalise_location(str(chosen))
    return str(Path(chosen).expanduser().resolve())


def resolve_store_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The store's folder, for code that needs a local one; ``LocalOnly`` for ``s3://``."""
    location = resolve_store_location(root)
    if is_object_location(location):
        raise LocalOnly(
            f"the store {location} is on object storage, and this needs a local store folder"
        )
    return Path(location)


class LocalOnly(ValueError):
    """An operation that needs a local store folder was given an ``s3://`` store."""


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
    """A folder (or ``s3://`` prefix) of Parquet tables. Cheap to construct; ``open``
    creates the layout."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        if is_object_location(root):
            self.location = normalise_location(str(root))
            self._root: Path | None = None
        else:
            self._root = Path(root)
            self.location = str(self._root)

    # -- where things are -----------------------------------------------------------------

    @property
    def remote(self) -> bool:
        """Whether the store is on object storage (``s3://``) rather than in a folder."""
        return self._root is None

    @property
    def root(self) -> Path:
        """The store's folder; ``LocalOnly`` for an ``s3://`` store (use ``location``)."""
        if self._root is None:
            raise LocalOnly(
                f"the store {self.location} is on object storage: this operation needs a "
                "local store folder (run it against a local store, or use the store's "
                "methods, which work on both)"
            )
        return self._root

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The filesystem the store's locations are read through (local or s3fs)."""
        if self._root is None:
            return object_filesystem()
        return fsspec.filesystem("file")

    def locate(self, *parts: str) -> str:
        """The location of ``parts`` under the store: an absolute path or an ``s3://`` URL."""
        if self._root is None:
            return "/".join([self.location, *parts])
        return self._root.joinpath(*parts).as_posix()

    def scratch_dir(self) -> Path:
        """A local folder for temporary files of this store's operations (``tmp/`` when
        local, so crash leftovers are cleaned by the next writer; else the system's)."""
        if self._root is None:
            return Path(tempfile.gettempdir())
        return self.tmp_dir

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Store:
        """Open (creating if needed) the store at ``resolve_store_location(root)``."""
        store = cls(resolve_store_location(root))
        store._ensure_layout()
        return store

    @classmethod
    def open_existing(cls, root: str | os.PathLike[str] | None = None) -> Store:
        """Open the store at ``resolve_store_location(root)`` without creating anything.

        For read-only commands: a mistyped path says so instead of answering from a new,
        empty store.
        """
        location = resolve_store_location(root)
        store = cls(location)
        if store._root is not None and store._root.exists() and not store._root.is_dir():
            raise NotADirectoryError(f"store path {location} is a file, not a store folder")
        if not store.exists():
            raise StoreNotFound(
                f"no store at {location}: pass --store (or set ${STORE_ENV_VAR}) to an "
                "existing store, or create one with `moe ingest FILE`"
            )
        return store

    def exists(self) -> bool:
        """Whether a store's layout is at this location (read-only check)."""
        if self._root is None:
            return bool(self.fs.exists(self.locate("catalog.version")))
        return self.tables_dir.is_dir() and (self._root / "catalog.version").exists()

    # -- the writer lock ------------------------------------------------------------------

    def _locks(self) -> tuple[threading.RLock, filelock.FileLock]:
        path = str(self.root / _LOCK_FILE)
        with _LOCKS_GUARD:
            if path not in _LOCKS:
                # The RLock orders this process' threads; the file lock orders processes.
                _LOCKS[path] = (threading.RLock(), filelock.FileLock(path, thread_local=False))
            return _LOCKS[path]

    def _lease(self) -> tuple[threading.RLock, ObjectLease, list[int]]:
        with _LOCKS_GUARD:
            entry = _LEASES.get(self.location)
            if entry is None or entry[1].fs is not self.fs:  # a new process' filesystem
                lease = ObjectLease(self.fs, self.locate(_LOCK_FILE))
                entry = _LEASES[self.location] = (threading.RLock(), lease, [0])
            return entry

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return float(os.environ.get(LOCK_TIMEOUT_ENV_VAR, _DEFAULT_LOCK_TIMEOUT_S))
        return timeout

    @contextmanager
    def writer(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the store's writer lock: one writing thread in one process at a time.

        Re-entrant in the holding thread. Waits up to ``timeout`` seconds (default
        ``$MOE_WRITER_LOCK_TIMEOUT`` or 900), then raises ``StoreBusy`` naming the holder.
        On object storage the lock is a lease object (``storage.objectstore.ObjectLease``).
        """
        timeout = self._timeout(timeout)
        if self._root is None:
            with self._remote_writer(timeout):
                yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        threads, files = self._locks()
        if not threads.acquire(timeout=timeout if timeout >= 0 else -1):
            raise StoreBusy(
                f"another thread of this process is writing to the store {self.location}; "
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

    @contextmanager
    def _remote_writer(self, timeout: float) -> Iterator[None]:
        threads, lease, depth = self._lease()
        if not threads.acquire(timeout=timeout if timeout >= 0 else -1):
            raise StoreBusy(
                f"another thread of this process is writing to the store {self.location}; "
                f"waited {timeout:g} s"
            )
        try:
            if depth[0] == 0:
                try:
                    lease.acquire(timeout)
                except TimeoutError as error:
                    raise StoreBusy(
                        f"another process is writing to the store {self.location} ({error}); "
                        f"wait for it to finish, or raise ${LOCK_TIMEOUT_ENV_VAR} "
                        f"(waited {timeout:g} s)"
                    ) from error
            depth[0] += 1
            try:
                yield
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    lease.release()
        finally:
            threads.release()

    def _check_lease(self) -> None:
        """Before publishing on object storage: this process must still hold the lease."""
        if self._root is None:
            self._lease()[1].check()

    def clean_stale(self) -> list[Path]:
        """Remove ``tmp/`` entries of dead writers and empty partition folders.

        Called by the writer holding the lock; returns what was removed. An object-storage
        store has neither (parts are staged locally, prefixes are not folders).
        """
        removed: list[Path] = []
        if self._root is None:
            return removed
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

    def _read_text(self, location: str) -> str | None:
        try:
            with self.fs.open(location, "r") as handle:
                return str(handle.read())
        except FileNotFoundError:
            return None

    def _layout_complete(self) -> bool:
        if self._root is None:
            if self._read_text(self.locate("catalog.version")) != _LAYOUT_DIGEST:
                return False
            return all(self.fs.exists(self._empty_part(table)) for table in TABLE_SCHEMAS)
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

    def _empty_part(self, table: str) -> str:
        """Location of ``table``'s zero-row placeholder part."""
        parts = ["tables", table] + ([f"{HIVE_KEY[table]}=_empty"] if table in HIVE_KEY else [])
        return self.locate(*parts, _EMPTY_PART)

    def _ensure_layout(self) -> None:
        if self._root is not None and self._root.exists() and not self._root.is_dir():
            raise NotADirectoryError(
                f"store path {self.root} is a file, not a folder: pass --store a folder"
            )
        if self._layout_complete():  # the common case: no write, so no lock
            return
        with self.writer():
            if self._root is not None:
                self.tmp_dir.mkdir(parents=True, exist_ok=True)
            for table, schema in TABLE_SCHEMAS.items():
                placeholder = self._empty_part(table)
                # A store made by an older version keeps placeholders of the older schema;
                # rewritten, they give every view the new columns (NULL in older parts).
                if not self.fs.exists(placeholder) or not self._schema_of(placeholder).equals(
                    schema
                ):
                    self._write_atomic(schema.empty_table(), placeholder)
            stamp = self.locate("catalog.version")
            if self._root is None:
                # No catalog.duckdb on object storage (see write_catalog): the stamp only.
                if self._read_text(stamp) != _LAYOUT_DIGEST:
                    self._publish_bytes(_LAYOUT_DIGEST.encode(), stamp)
                return
            # Rewrite the catalog when the declared views changed (a store made by an older
            # version of this code gains the new views on the next open).
            if (
                not (self.root / _CATALOG).exists()
                or not Path(stamp).exists()
                or Path(stamp).read_text() != _LAYOUT_DIGEST
            ):
                self.write_catalog()
                Path(stamp).write_text(_LAYOUT_DIGEST)

    def _schema_of(self, location: str) -> pa.Schema:
        if self._root is None:
            return pq.read_schema(location.removeprefix("s3://"), filesystem=self.fs)
        return pq.read_schema(location)

    def table_dir(self, table: str) -> Path:
        """Folder of ``table``'s parts (local stores); ``table`` must be declared in
        ``storage.schemas``."""
        self._check_table(table)
        return self.tables_dir / table

    def _check_table(self, table: str) -> None:
        if table not in TABLE_SCHEMAS:
            raise KeyError(f"unknown table {table!r}; known: {sorted(TABLE_SCHEMAS)}")

    def table_location(self, table: str, partition: dict[str, str] | None = None) -> str:
        """Location of ``table``'s parts (inside ``key=value`` folders if ``partition``)."""
        self._check_table(table)
        keys = [f"{key}={_partition_value(value)}" for key, value in (partition or {}).items()]
        return self.locate("tables", table, *keys)

    # -- writing --------------------------------------------------------------------------

    def _write_atomic(
        self,
        data: pa.Table,
        destination: str,
        compression: str = "zstd",
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Write ``data`` as one Parquet file, then publish it whole at ``destination``."""
        staging = self.scratch_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
        try:
            pq.write_table(data, staging, compression=compression, **(options or {}))
            self._publish_file(staging, destination)
        finally:
            staging.unlink(missing_ok=True)

    def _publish_file(self, staging: Path, destination: str) -> None:
        """Make the complete local file ``staging`` appear at ``destination`` in one step.

        Local: fsync, then ``os.replace`` (the staging file is moved). Object storage: one
        upload (a PUT, or a multipart upload completed at the end), which S3 makes visible
        whole or not at all; the staging file is left for the caller to remove.
        """
        if self._root is None:
            self._check_lease()
            self.fs.put_file(str(staging), destination)
            return
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        Path(destination).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, destination)

    def _publish_bytes(self, data: bytes, destination: str) -> None:
        """A small object (a stamp) written whole: a single PUT on object storage."""
        if self._root is None:
            self._check_lease()
            self.fs.pipe_file(destination, data)
            return
        staging = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.bytes"
        try:
            staging.write_bytes(data)
            self._publish_file(staging, destination)
        finally:
            staging.unlink(missing_ok=True)

    def publish_copy(self, source: str | os.PathLike[str], *parts: str) -> tuple[str, str]:
        """Copy the local file ``source`` to ``parts`` under the store, published whole.

        Returns the new location and the SHA-256 of exactly the bytes published (hashed
        from the staged copy, so a source that changes meanwhile cannot disagree).
        """
        destination = self.locate(*parts)
        staging = self.scratch_dir() / f"{os.getpid()}-{uuid.uuid4().hex}-{parts[-1]}"
        try:
            shutil.copyfile(source, staging)
            with open(staging, "rb") as handle:
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            self._publish_file(staging, destination)
        finally:
            staging.unlink(missing_ok=True)
        return destination, digest

    def part_path(
        self, table: str, part_name: str, partition: dict[str, str] | None = None
    ) -> Path:
        """Where part ``part_name`` of ``table`` lives in a local store."""
        self.root  # noqa: B018 - raises LocalOnly for an s3:// store
        return Path(self.part_location(table, part_name, partition))

    def part_location(
        self, table: str, part_name: str, partition: dict[str, str] | None = None
    ) -> str:
        """Location of part ``part_name`` of ``table`` (inside ``key=value`` folders if any)."""
        if not part_name or "/" in part_name or part_name.startswith((".", "_")):
            raise ValueError(f"invalid part name {part_name!r}")
        return f"{self.table_location(table, partition)}/{part_name}.parquet"

    def has_part(self, table: str, part_name: str, partition: dict[str, str] | None = None) -> bool:
        return bool(self.fs.exists(self.part_location(table, part_name, partition)))

    def write_part(
        self,
        table: str,
        part_name: str,
        data: pa.Table,
        partition: dict[str, str] | None = None,
        compression: str = "zstd",
        *,
        held: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> str:
        """Write ``data`` as one whole part; replaces a part of the same name (idempotent).

        ``data`` is cast to the table's declared schema, so a wrong column fails here, not
        later in a reader. ``compression="none"`` suits float arrays read back in bulk;
        ``options`` are further ``pyarrow.parquet.write_table`` settings (encodings,
        dictionary and statistics per column) for a writer that knows its columns.
        Takes the writer lock unless ``held``: the caller's operation already holds it from
        another thread of this process (ingest's background part writer). Returns the part's
        location.
        """
        schema = TABLE_SCHEMAS[table]
        try:
            data = data.select(schema.names).cast(schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ValueError(
                f"rows for table {table!r} do not match its schema: {error}"
            ) from error
        destination = self.part_location(table, part_name, partition)
        if held:
            self._write_atomic(data, destination, compression, options)
        else:
            with self.writer():
                self._write_atomic(data, destination, compression, options)
        return destination

    def open_part(
        self,
        table: str,
        part_name: str,
        compression: str = "zstd",
        *,
        held: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> PartWriter:
        """Start one part of ``table`` written in pieces, published whole by ``publish()``.

        For a writer that produces a part's rows in batches: each ``write`` encodes its batch
        (a row group) at once, so little is left to encode after the last batch and rows
        need not be held until then. Arguments as for ``write_part``; ``discard()`` drops
        an unpublished part (a killed process leaves a staging file the next writer removes).
        """
        destination = self.part_location(table, part_name)  # validates the name first
        staging = self.scratch_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
        return PartWriter(
            self, TABLE_SCHEMAS[table], staging, destination, compression, held, options
        )

    @contextmanager
    def rewrite_partition(
        self, table: str, partition: dict[str, str]
    ) -> Iterator[Callable[[str, pa.Table], None]]:
        """Write a whole hive partition, then swap it in place of any previous one.

        Yields ``write(part_name, data)``. Parts go to a staging folder under ``tmp/``; only
        when the block finishes is the folder renamed into the table, so a run killed midway
        leaves the previous rows (or none) and a rerun leaves exactly one set.

        On object storage there is no folder rename: the staged parts are uploaded one by
        one (each whole), then the previous parts of the partition that the new set does not
        replace are deleted. A run killed midway still publishes nothing; a reader during
        the swap sees every part whole but may see the partition partly old, partly new.
        """
        schema = TABLE_SCHEMAS[table]
        final = self.table_location(table, partition)  # refuses reserved names before work
        staging = self.scratch_dir() / f"partition-{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)

        def write(part_name: str, data: pa.Table) -> None:
            target = self.part_location(table, part_name)  # validates the name
            name = target.rsplit("/", 1)[-1]
            pq.write_table(data.select(schema.names).cast(schema), staging / name)

        try:
            yield write
            if self._root is None:
                with self.writer():
                    self._swap_remote_partition(staging, final)
                return
            retired = self.tmp_dir / f"retired-{os.getpid()}-{uuid.uuid4().hex}"
            with self.writer():  # the swap is the write; staging needed no lock
                if Path(final).exists():
                    os.replace(final, retired)
                Path(final).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, final)
            shutil.rmtree(retired, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def drop_partition(self, table: str, partition: dict[str, str]) -> bool:
        """Remove one hive partition of ``table`` (e.g. an expired forecast run); whether it
        existed. Readers see the partition whole or not at all, as in ``rewrite_partition``:
        locally the folder is renamed away in one step under the writer lock, then deleted;
        on object storage its parts are deleted one by one (``storage.sql.query`` re-lists
        and retries when a listed part vanished)."""
        final = self.table_location(table, partition)  # refuses reserved names
        with self.writer():
            if self._root is None:
                fs = self.fs
                parts = self._list_parts(final, "*.parquet")
                for part in parts:
                    fs.rm(part.removeprefix("s3://"))
                return bool(parts)
            if not Path(final).exists():
                return False
            retired = self.tmp_dir / f"retired-{os.getpid()}-{uuid.uuid4().hex}"
            os.replace(final, retired)
        shutil.rmtree(retired, ignore_errors=True)
        return True

    def publish_compacted(self, table: str, staging: Path, replaced: list[str]) -> str:
        """Publish ``staging`` (a compacted part whose footer names ``replaced``) as a new part
        of ``table``, then delete the ``replaced`` parts; returns the new part's location.

        The caller holds the writer lock for the whole compaction (no part can appear or
        change meanwhile). Readers skip parts named by a visible compacted part, so between
        the publish and the last delete each row is read once (``_scan_sql``); a reader
        that listed a part deleted here re-lists (``storage.sql.query``).
        """
        if table not in COMPACTABLE:
            raise ValueError(f"table {table!r} is not compactable; compactable: {COMPACTABLE}")
        destination = self.part_location(table, f"compact-{uuid.uuid4().hex}")
        with self.writer():
            self._publish_file(staging, destination)
            if self._root is None:
                if replaced:
                    self._check_lease()
                    self.fs.rm([location.removeprefix("s3://") for location in replaced])
            else:
                for location in replaced:
                    Path(location).unlink(missing_ok=True)
        return destination

    def _swap_remote_partition(self, staging: Path, final: str) -> None:
        new = sorted(entry.name for entry in staging.iterdir())
        old = [location.rsplit("/", 1)[-1] for location in self._list_parts(final)]
        for name in new:
            self._publish_file(staging / name, f"{final}/{name}")
        stale = [f"{final}/{name}" for name in old if name not in set(new)]
        if stale:
            self._check_lease()
            self.fs.rm(stale)

    # -- reading --------------------------------------------------------------------------

    def _list_parts(
        self, folder: str, pattern: str = "*.parquet", *, for_reader: bool = False
    ) -> list[str]:
        """Parts matching ``pattern`` under ``folder``, as locations, sorted.

        ``for_reader``: list through the readers' filesystem (object storage), whose cache
        then answers DuckDB's look-ups of these parts; writers always list uncached.

        Locally the listing uses ``glob.glob``, which skips a folder that vanishes while it
        is being listed (a run dropped by retention or replaced by a rewrite); ``Path.glob``
        on Python 3.11 raises FileNotFoundError there instead, failing a concurrent reader.
        """
        if self._root is None:
            fs = reader_filesystem() if for_reader else self.fs
            found = fs.glob(f"{folder}/{pattern}")
            return sorted("s3://" + str(path) for path in found)
        found = glob.glob(f"{glob.escape(folder)}/{pattern}", include_hidden=True)
        return sorted(Path(path).as_posix() for path in found)

    def part_locations(
        self, table: str, partition: dict[str, str] | None = None, *, for_reader: bool = False
    ) -> list[str]:
        """Every Parquet part of ``table`` now (or of one partition), sorted.

        ``for_reader``: for a connection this store has just ``register``ed (see there).
        """
        pattern = "*/*.parquet" if table in HIVE_KEY and partition is None else "*.parquet"
        location = self.table_location(table, partition)
        return self._list_parts(location, pattern, for_reader=for_reader)

    def part_files(self, table: str) -> list[Path]:
        """Every Parquet part of a local store's ``table`` now (the files its view reads)."""
        self.root  # noqa: B018 - raises LocalOnly for an s3:// store
        return [Path(location) for location in self.part_locations(table)]

    def read_part(self, location: str, columns: list[str] | None = None) -> pa.Table:
        """One part as an Arrow table (``columns`` only, if given)."""
        if self._root is None:
            path = location.removeprefix("s3://")
            return pq.read_table(path, columns=columns, filesystem=self.fs)
        return pq.read_table(location, columns=columns)

    def _scan_sql(self, table: str, files: list[str] | None = None) -> str:
        """``read_parquet`` over the table's folder (globbed at query time) or over ``files``.

        A compactable table's scan skips the parts that a compacted part among them
        replaces (``REPLACES_KEY`` in its footer): while ``moe store compact`` has published
        the new part and not yet deleted the old ones, a reader that lists both still sees
        each row once (storage.compaction).
        """
        hive = ", hive_partitioning=true" if table in HIVE_KEY else ""
        if files is not None:
            source = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
        else:
            folder = self.table_location(table).replace("'", "''")
            pattern = "**/*.parquet" if table in HIVE_KEY else "*.parquet"
            source = f"'{folder}/{pattern}'"
        if table not in COMPACTABLE:
            return f"read_parquet({source}, union_by_name=true{hive})"
        scan = (
            f"(SELECT * EXCLUDE (filename) FROM read_parquet({source}, union_by_name=true, "
            "filename=true) WHERE parse_filename(filename) NOT IN ("
            "SELECT unnest(string_split(decode(value), '/')) "
            f"FROM parquet_kv_metadata({source}) WHERE key = '{REPLACES_KEY}'::BLOB))"
        )
        added = _ADDED_COLUMNS.get(table)
        if added:
            columns = ", ".join(f"NULL::{kind} AS {name}" for name, kind in added.items())
            scan = f"(FROM {scan} UNION ALL BY NAME SELECT {columns} WHERE false)"
        return scan

    def register(self, connection: duckdb.DuckDBPyConnection) -> None:
        """Let ``connection`` read this store's locations: on object storage, DuckDB reads
        ``s3://`` through this store's fsspec filesystem (its httpfs extension is not used).

        That filesystem caches listings, emptied here: a connection sees the parts published
        before it was registered, and may miss later ones; open a new connection to see them
        (``moe sql`` and ``storage.sql.query`` open one per query).
        """
        if self._root is None:
            self.fs  # noqa: B018 - says how to install s3fs when it is missing
            fs = reader_filesystem()
            # Listings are cached for speed; a new connection starts from fresh ones, so it
            # sees every part published before it opened.
            fs.invalidate_cache()
            connection.register_filesystem(fs)

    def _create_views(
        self,
        connection: duckdb.DuckDBPyConnection,
        files: dict[str, list[str]] | None = None,
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
        """An in-memory DuckDB with every view over the parts listed now; holds no lock.

        The views name the listed parts (no glob at query time), so a compacted part and
        the parts it replaces are judged from one listing (``_scan_sql``). Open a new
        connection to see later parts; a part deleted after the listing (by compaction or
        retention) fails the read with a missing-file error: connect again.
        """
        connection = duckdb.connect(":memory:")
        try:
            self.register(connection)
            files = {table: self.part_locations(table, for_reader=True) for table in TABLE_SCHEMAS}
            self._create_views(connection, files)
        except BaseException:
            connection.close()
            raise
        return connection

    def write_catalog(self) -> Path:
        """(Re)write ``catalog.duckdb``: the same views, for the DuckDB CLI and notebooks.

        Views hold absolute paths: rerun ``moe store catalog`` after moving the store. Local
        stores only: a catalog for an ``s3://`` store would need DuckDB's httpfs extension in
        every reader, which this project does not ship; use ``moe sql`` or ``Store.connect``.
        """
        if self._root is None:
            raise LocalOnly(
                f"the store {self.location} is on object storage: catalog.duckdb is written "
                "for local stores only (its views would need DuckDB's httpfs extension); "
                "query it with `moe sql` or storage.store.Store.connect() instead"
            )
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


class PartWriter:
    """A part written batch by batch (``Store.open_part``); published whole or not at all."""

    def __init__(
        self,
        store: Store,
        schema: pa.Schema,
        staging: Path,
        destination: str,
        compression: str,
        held: bool,
        options: Mapping[str, Any] | None,
    ) -> None:
        self._store, self._schema, self._staging = store, schema, staging
        self._destination, self._held = destination, held
        self._writer = pq.ParquetWriter(staging, schema, compression=compression, **(options or {}))
        self.rows = 0

    def write(self, data: pa.Table) -> None:
        """Append ``data`` (cast to the table's schema, as ``write_part`` does) as a row group."""
        try:
            data = data.select(self._schema.names).cast(self._schema)
        except (KeyError, pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ValueError(f"rows do not match the table's schema: {error}") from error
        self._writer.write_table(data)
        self.rows += data.num_rows

    def publish(self) -> str:
        """Close the file and make it appear whole at its location; returns the location."""
        try:
            self._writer.close()
            if self._held:
                self._store._publish_file(self._staging, self._destination)
            else:
                with self._store.writer():
                    self._store._publish_file(self._staging, self._destination)
        finally:
            self._staging.unlink(missing_ok=True)
        return self._destination

    def discard(self) -> None:
        """Drop the unpublished part (after a failure); harmless after ``publish``."""
        self._writer.close()  # idempotent
        self._staging.unlink(missing_ok=True)
