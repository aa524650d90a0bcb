"""``moe store compact``: many small parts of a table rewritten as one, safely under readers.

Every ingest, registry event and so on adds a part; a store that ingests daily gathers
thousands of small files, and every query opens each of them. Compaction reads a table's
parts, writes their rows as one new part, publishes it, then deletes the old parts. For
``series_versions`` it can also expire superseded versions (``keep_versions``,
``older_than``) and it re-encodes each series' kept versions: the first full, each later
one an append row when it extends the one before (``storage.versions``).

Why a concurrent reader never sees a row twice nor misses one: readers list a table's parts,
then read them. The new part carries, in its Parquet footer, the names of the parts it
replaces, and every view skips the parts a listed compacted part names
(``Store._scan_sql``). So whatever moment a reader lists at, it reads one complete set:

* before the publish: the old parts only;
* between the publish and the last delete: the new part plus some old ones, which it skips;
* after: the new part only.

The publish is atomic (``os.replace`` locally, one PUT on object storage). A reader that
listed an old part which is deleted before it reads it gets a missing-file error and lists
again (``storage.sql.query``, ``storage.series.load_series``). Writers are excluded by the
store's writer lock, held from listing the parts to the last delete, so no part appears or
changes meanwhile. A crash after the publish leaves old parts that the views skip; the next
compaction deletes them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from storage.schemas import COMPACTABLE, REPLACES_KEY, TABLE_SCHEMAS
from storage.store import Store

__all__ = ["CompactionReport", "compact_store", "compact_table"]

_BATCH_ROWS = 100_000


@dataclass(frozen=True)
class CompactionReport:
    """One table's compaction: parts and rows before and after, versions expired."""

    table: str
    parts_before: int
    parts_after: int
    rows_before: int
    rows_after: int
    versions_dropped: int
    dry_run: bool


# The stored versions with their number, chain (see storage.schemas), what expiry needs,
# and which to keep. Parameters: $1 keep_versions (null: no limit), $2 cutoff (null).
_SERIES_KEPT = """
    numbered AS (
        SELECT *, row_number() OVER (PARTITION BY series_id
                                     ORDER BY ingested_at, ingest_id, source_line) AS version
        FROM {scan}
    ),
    chained AS (
        SELECT *,
               count(*) FILTER (WHERE base_hash IS NULL) OVER (
                   PARTITION BY series_id ORDER BY version ROWS UNBOUNDED PRECEDING) AS chain,
               max(version) OVER (PARTITION BY series_id) - version AS newer,
               lead(ingested_at) OVER (PARTITION BY series_id ORDER BY version)
                   AS superseded_at,
               lag(content_hash) OVER (PARTITION BY series_id ORDER BY version)
                   AS stored_prev_hash
        FROM numbered
    ),
    kept AS (
        SELECT * FROM chained
        WHERE newer = 0 OR NOT (
            ($1::BIGINT IS NULL OR newer >= $1::BIGINT)
            AND ($2::TIMESTAMPTZ IS NULL OR superseded_at < $2::TIMESTAMPTZ)
            AND ($1::BIGINT IS NOT NULL OR $2::TIMESTAMPTZ IS NOT NULL)
        )
    )"""

# Kept versions re-encoded. Expiry drops the oldest versions only (a prefix of each series'
# history), so only the first kept version can be an append whose base is gone: its full
# values are rebuilt from its chain. Every other append keeps its stored form (its base is
# the version before it, kept). A full version that extends the full version before it
# (an old store of full copies) becomes an append.
_SERIES_ENCODED = """
    firsts AS (
        SELECT series_id, version, chain FROM (
            SELECT *, min(version) OVER (PARTITION BY series_id) AS first_kept FROM kept
        ) WHERE version = first_kept AND base_hash IS NOT NULL
    ),
    rebuilt AS (
        SELECT c.series_id, f.version, flatten(list(c.values ORDER BY c.version)) AS full_values
        FROM chained c JOIN firsts f
             ON c.series_id = f.series_id AND c.chain = f.chain AND c.version <= f.version
        GROUP BY c.series_id, f.version
    ),
    whole AS (
        SELECT k.*, coalesce(r.full_values, k.values) AS out_values,
               (k.base_hash IS NULL OR r.full_values IS NOT NULL) AS out_full
        FROM kept k LEFT JOIN rebuilt r ON k.series_id = r.series_id AND k.version = r.version
    ),
    paired AS (
        SELECT *, lag(out_values) OVER w AS prev_values, lag(out_full) OVER w AS prev_full,
               lag(n_points) OVER w AS prev_points, lag(content_hash) OVER w AS prev_hash,
               lag(start) OVER w AS prev_start, lag(freq) OVER w AS prev_freq
        FROM whole WINDOW w AS (PARTITION BY series_id ORDER BY version)
    ),
    encoded AS (
        SELECT *, coalesce(out_full AND prev_full AND n_points > prev_points
                   AND start IS NOT DISTINCT FROM prev_start
                   AND freq IS NOT DISTINCT FROM prev_freq
                   AND list_slice(out_values, 1, prev_points) IS NOT DISTINCT FROM prev_values,
                   false) AS to_append
        FROM paired
    )"""

_SERIES_SELECT = """
    SELECT series_id, content_hash, n_points, n_missing, start, freq,
           CASE WHEN to_append THEN list_slice(out_values, prev_points + 1, n_points)
                ELSE out_values END AS values,
           source_file, source_line, ingest_id, ingested_at,
           CASE WHEN to_append THEN prev_hash WHEN out_full THEN NULL ELSE base_hash END
               AS base_hash,
           CASE WHEN to_append THEN prev_points WHEN out_full THEN NULL ELSE base_points END
               AS base_points
    FROM encoded ORDER BY series_id, version"""


def compact_table(
    store: Store,
    table: str,
    *,
    keep_versions: int | None = None,
    older_than: timedelta | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> CompactionReport:
    """Rewrite ``table``'s parts as one (see the module docstring); ``dry_run`` only counts.

    ``keep_versions`` / ``older_than`` apply to ``series_versions`` only: superseded
    versions beyond the newest ``keep_versions`` (>= 1) and superseded before
    ``now - older_than`` are dropped; with neither, every version is kept.
    """
    if table not in COMPACTABLE:
        raise ValueError(
            f"table {table!r} cannot be compacted; compactable tables: {', '.join(COMPACTABLE)}"
        )
    if keep_versions is not None and keep_versions < 1:
        raise ValueError(
            f"keep_versions must be >= 1 (the latest always stays), got {keep_versions}"
        )
    if older_than is not None and older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    expiring = keep_versions is not None or older_than is not None
    if expiring and table != "series_versions":
        raise ValueError("keep_versions/older_than apply to series_versions only")
    cutoff = None if older_than is None else (now or datetime.now(UTC)) - older_than
    with store.writer():
        placeholder = store._empty_part(table)
        parts = [p for p in store.part_locations(table) if p != placeholder]
        connection = duckdb.connect(":memory:")
        try:
            store.register(connection)
            scan = store._scan_sql(table, [placeholder, *parts])
            stored = "SELECT count(*) FROM read_parquet($1)"  # the file list bound, not spliced
            rows_stored = _scalar(connection, stored, [[placeholder, *parts]])  # replaced included
            rows_before = _scalar(connection, f"SELECT count(*) FROM {scan}")
            if table == "series_versions":
                kept = "WITH " + _SERIES_KEPT.format(scan=scan)
                parameters: list[object] = [keep_versions, cutoff]
                broken = _scalar(
                    connection,
                    f"{kept} SELECT count(*) FROM chained "
                    "WHERE base_hash IS NOT NULL AND base_hash IS DISTINCT FROM stored_prev_hash",
                    parameters,
                )
                if broken:  # an append whose base is not the version before it
                    raise RuntimeError(
                        f"compacting series_versions: {broken} append row(s) do not follow "
                        "their base version; nothing was changed"
                    )
                sql = f"{kept},{_SERIES_ENCODED}{_SERIES_SELECT}"
                rows_after = _scalar(connection, f"{kept} SELECT count(*) FROM kept", parameters)
            else:
                sql = f"SELECT * FROM {scan}"
                parameters = []
                rows_after = rows_before
            dropped = rows_before - rows_after
            if dry_run or (len(parts) <= 1 and dropped == 0 and rows_stored == rows_before):
                after = len(parts) if not dry_run or len(parts) <= 1 else 1
                return CompactionReport(
                    table, len(parts), after, rows_before, rows_after, dropped, dry_run
                )
            staging = store.scratch_dir() / f"{os.getpid()}-{uuid.uuid4().hex}.parquet"
            try:
                _write(connection, sql, parameters, table, parts, staging)
                written = pq.ParquetFile(staging).metadata.num_rows
                if written != rows_after:  # never swap in a part that lost rows
                    raise RuntimeError(
                        f"compacting {table}: wrote {written} rows, expected {rows_after}; "
                        "nothing was replaced"
                    )
                store.publish_compacted(table, staging, parts)
            finally:
                staging.unlink(missing_ok=True)
        finally:
            connection.close()
    return CompactionReport(table, len(parts), 1, rows_before, rows_after, dropped, False)


def compact_store(
    store: Store,
    tables: Sequence[str] | None = None,
    *,
    keep_versions: int | None = None,
    older_than: timedelta | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[CompactionReport]:
    """Compact ``tables`` (default: every compactable table); one report per table."""
    chosen = list(COMPACTABLE if tables is None else tables)
    return [
        compact_table(
            store,
            table,
            keep_versions=keep_versions if table == "series_versions" else None,
            older_than=older_than if table == "series_versions" else None,
            now=now,
            dry_run=dry_run,
        )
        for table in chosen
    ]


def _scalar(
    connection: duckdb.DuckDBPyConnection, sql: str, parameters: list[object] | None = None
) -> int:
    rows = connection.execute(sql, parameters or []).fetchall()  # fetched to the end
    return int(rows[0][0]) if rows else 0


def _write(
    connection: duckdb.DuckDBPyConnection,
    sql: str,
    parameters: list[object],
    table: str,
    replaced: list[str],
    staging: Path,
) -> None:
    """Stream the rows of ``sql`` into ``staging`` with the table's schema; the footer
    names the ``replaced`` parts (what readers skip once this part is visible)."""
    names = "/".join(location.rsplit("/", 1)[-1] for location in replaced)
    schema = TABLE_SCHEMAS[table].with_metadata({REPLACES_KEY: names})
    reader = connection.sql(sql, params=parameters).to_arrow_reader(_BATCH_ROWS)
    with pq.ParquetWriter(staging, schema, compression="zstd") as writer:
        for batch in reader:
            rows = pa.Table.from_batches([batch]).select(schema.names)
            writer.write_table(rows.cast(schema))
    # No rows at all still leaves a valid file: the schema and the footer key.
