"""Every table of the store, declared once: Arrow schemas of the Parquet parts and the views.

Tables are folders of Parquet parts under ``<store>/tables/<table>/``; a part is written whole
and renamed into place. Views are defined over those folders and are what people query.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["TABLE_SCHEMAS", "VIEW_SQL", "TABLE_NAMES", "VIEW_NAMES", "HIVE_KEY"]

_TS = pa.timestamp("us", tz="UTC")

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    # One row per (series_id, content): a changed series under an existing id is a new version.
    "series_versions": pa.schema(
        [
            ("series_id", pa.string()),
            ("content_hash", pa.string()),  # blake2b of values, start and freq
            ("n_points", pa.int32()),
            ("n_missing", pa.int32()),
            ("start", pa.string()),  # ISO 8601 or null
            ("freq", pa.string()),  # pandas offset alias or null
            ("values", pa.list_(pa.float64())),  # null marks a missing value
            ("source_file", pa.string()),
            ("source_line", pa.int64()),
            ("ingest_id", pa.string()),
            ("ingested_at", _TS),
        ]
    ),
    # One row per ingest call: lines read = blank + accepted + rejected, always.
    "ingest_runs": pa.schema(
        [
            ("ingest_id", pa.string()),
            ("source_file", pa.string()),
            ("file_sha256", pa.string()),
            ("started_at", _TS),
            ("finished_at", _TS),
            ("lines_read", pa.int64()),
            ("blank_lines", pa.int64()),
            ("accepted", pa.int64()),
            ("new_series", pa.int64()),
            ("new_versions", pa.int64()),
            ("unchanged", pa.int64()),
            ("rejected", pa.int64()),
        ]
    ),
    # Every rejected line, with its raw text and the reason.
    "ingest_rejects": pa.schema(
        [
            ("file_sha256", pa.string()),
            ("source_file", pa.string()),
            ("line_number", pa.int64()),
            ("field", pa.string()),
            ("reason", pa.string()),
            ("raw_line", pa.string()),  # undecodable bytes kept as \\x escapes
            ("ingest_id", pa.string()),
        ]
    ),
    # One row per (expert model, input_length, pred_length, window content): the cache.
    # Folders: expert_forecasts/cache=<expert>-<key digest>-L<input>-H<pred>/<part>.parquet
    "expert_forecasts": pa.schema(
        [
            ("expert", pa.string()),
            ("cache_key", pa.string()),  # exact model: checkpoint, revision, settings
            ("input_length", pa.int32()),
            ("pred_length", pa.int32()),
            ("window_hash", pa.string()),  # blake2b of the float32 context, NaN canonical
            ("point", pa.list_(pa.float32())),  # (H,)
            ("quantiles", pa.list_(pa.float32())),  # (H * Q,) row-major (step, level); or null
            ("computed_at", _TS),
        ]
    ),
}

TABLE_NAMES: tuple[str, ...] = tuple(TABLE_SCHEMAS)

#: Tables whose parts live in hive folders (``key=value/``), and the folder key of each.
HIVE_KEY: dict[str, str] = {"expert_forecasts": "cache"}

#: View name -> SELECT over ``{table}`` placeholders, which ``Store`` replaces with
#: ``read_parquet`` calls on the table folders (paths come from the store, never from users).
VIEW_SQL: dict[str, str] = {
    "series_versions": """
        SELECT * EXCLUDE (ingested_at), ingested_at,
               row_number() OVER (PARTITION BY series_id
                                  ORDER BY ingested_at, ingest_id, source_line) AS version
        FROM {series_versions}
    """,
    "series": """
        SELECT * FROM series_versions
        QUALIFY version = max(version) OVER (PARTITION BY series_id)
    """,
    "ingest_runs": "SELECT * FROM {ingest_runs}",
    "ingest_rejects": "SELECT * FROM {ingest_rejects}",
    "expert_forecasts": "SELECT * EXCLUDE (cache) FROM {expert_forecasts}",
}

VIEW_NAMES: tuple[str, ...] = tuple(VIEW_SQL)
