"""Every table of the store, declared once: Arrow schemas of the Parquet parts and the views.

Tables are folders of Parquet parts under ``<store>/tables/<table>/``; a part is written whole
and renamed into place. Views are defined over those folders and are what people query.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "TABLE_SCHEMAS",
    "VIEW_SQL",
    "TABLE_NAMES",
    "VIEW_NAMES",
    "HIVE_KEY",
    "QUANTILE_COLUMNS",
    "COMPACTABLE",
    "REPLACES_KEY",
]

_TS = pa.timestamp("us", tz="UTC")

#: Quantile columns of the forecast tables, for levels 0.05, 0.1, 0.2, ..., 0.9, 0.95.
QUANTILE_COLUMNS: tuple[str, ...] = (
    "q05",
    "q10",
    "q20",
    "q30",
    "q40",
    "q50",
    "q60",
    "q70",
    "q80",
    "q90",
    "q95",
)

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
            # An append (storage.versions): ``values`` holds only the points after the first
            # ``base_points``, which are the previous version's (``base_hash``); both null for
            # a full version. ``n_points``, ``n_missing`` and ``content_hash`` are the full
            # series'. The views return full values either way.
            ("base_hash", pa.string()),
            ("base_points", pa.int32()),
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
            ("status", pa.string()),  # started (killed if it stays so) | complete | partial
            ("error", pa.string()),  # why a partial ingest stopped
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
    # Batch forecasts, long format: one row per (run, series, step).
    # Folders: forecasts/run_id=<run>/<part>.parquet; a run's folder is replaced whole.
    "forecasts": pa.schema(
        [
            ("run_id", pa.string()),
            ("model_version", pa.string()),
            ("series_id", pa.string()),
            ("series_hash", pa.string()),  # content_hash of the series version forecast
            ("origin_index", pa.int64()),  # points observed when forecasting
            ("step", pa.int32()),  # 1..H
            ("timestamp", _TS),  # when the series has start and freq, else null
            ("point", pa.float64()),
            *[(name, pa.float64()) for name in QUANTILE_COLUMNS],
            ("expert_1", pa.string()),
            ("weight_1", pa.float64()),
            ("expert_2", pa.string()),
            ("weight_2", pa.float64()),
            ("created_at", _TS),
        ]
    ),
    # Trained gates: one row per version, written once.
    "model_versions": pa.schema(
        [
            ("model_version", pa.string()),
            ("created_at", _TS),
            ("artifact_path", pa.string()),
            ("artifact_sha256", pa.string()),
            ("gate_kind", pa.string()),
            ("expert_keys", pa.list_(pa.string())),
            ("input_length", pa.int32()),
            ("pred_length", pa.int32()),
            ("train_windows", pa.int64()),
            ("backtest_mase", pa.float64()),  # mixture MASE on the retrain's backtest windows
            ("metrics_json", pa.string()),
        ]
    ),
    # Registry events; the champion is the target of the latest promote/rollback.
    "model_events": pa.schema(
        [
            ("model_version", pa.string()),
            ("event", pa.string()),  # registered | promoted | rejected | rolled_back
            ("event_at", _TS),
            ("reason", pa.string()),
        ]
    ),
    # Backtest scores: per model (expert or mixture) overall and per series.
    "backtest_metrics": pa.schema(
        [
            ("run_id", pa.string()),
            ("model_version", pa.string()),
            ("model", pa.string()),  # expert name, 'mixture', 'equal_weight', 'best_in_hindsight'
            ("series_id", pa.string()),  # null for the overall row
            ("n_windows", pa.int64()),
            ("mase", pa.float64()),
            ("smape", pa.float64()),
            ("mape", pa.float64()),
            ("rmse", pa.float64()),
            ("wql", pa.float64()),  # weighted quantile loss (CRPS approximation)
            ("created_at", _TS),
            # Added later (older parts read them as null): the 90% interval [q05, q95].
            ("coverage_90", pa.float64()),  # share of held-out actuals inside it
            ("width_90", pa.float64()),  # mean width in MASE's scale
        ]
    ),
    # Realised error of past forecasts once actuals arrived (monitoring).
    "forecast_evaluations": pa.schema(
        [
            ("run_id", pa.string()),
            ("model_version", pa.string()),
            ("evaluated_at", _TS),
            ("n_series", pa.int64()),
            ("n_points", pa.int64()),
            ("mape", pa.float64()),
            ("smape", pa.float64()),
            ("mase", pa.float64()),
            ("coverage_90", pa.float64()),  # share of actuals inside [q05, q95]
        ]
    ),
}

TABLE_NAMES: tuple[str, ...] = tuple(TABLE_SCHEMAS)

#: Tables ``moe store compact`` may rewrite (storage.compaction): flat tables whose part names
#: are never reused by a writer, so a compacted part can name the parts it replaces. Not
#: ``forecast_evaluations``/``backtest_metrics`` (a rerun replaces its part by name), nor the
#: hive tables (``expert_forecasts`` is read part by part by storage.cache; forecast runs
#: are whole partitions that ``moe store retain`` expires).
COMPACTABLE: tuple[str, ...] = (
    "series_versions",
    "ingest_runs",
    "ingest_rejects",
    "model_versions",
    "model_events",
)

#: Parquet footer key of a compacted part: the part names it replaces, '/'-separated. The
#: views skip every part a visible compacted part names (Store._scan_sql).
REPLACES_KEY = "moe:replaces"

#: Tables whose parts live in hive folders (``key=value/``), and the folder key of each.
HIVE_KEY: dict[str, str] = {"expert_forecasts": "cache", "forecasts": "run_id"}

# Stored versions numbered in ingest order, and "chain": how many full versions of the
# series up to this row, so a full version and the appends after it share one chain.
# Computed on the key columns only, then joined back to the rows: window operators that
# carried every version's values made reading a store of many full versions 3x slower.
_KEYED = """
    keys AS (
        SELECT series_id, ingest_id, source_line,
               row_number() OVER (PARTITION BY series_id
                                  ORDER BY ingested_at, ingest_id, source_line) AS version,
               count(*) FILTER (WHERE base_hash IS NULL) OVER (
                   PARTITION BY series_id ORDER BY ingested_at, ingest_id, source_line
                   ROWS UNBOUNDED PRECEDING) AS chain
        FROM {series_versions}
    )"""

_JOIN_KEYS = """s.series_id = k.series_id AND s.ingest_id = k.ingest_id
                AND s.source_line = k.source_line"""

#: View name -> SELECT over ``{table}`` placeholders, which ``Store`` replaces with
#: ``read_parquet`` calls on the table folders (paths come from the store, never from users).
VIEW_SQL: dict[str, str] = {
    # Versions in ingest order; an append row's values are those of the rows before it back
    # to the nearest full version (its chain) followed by its own, so every version reads as
    # its full series.
    "series_versions": f"""
        WITH {_KEYED},
        numbered AS (
            SELECT s.*, k.version, k.chain FROM {{series_versions}} s JOIN keys k
            ON {_JOIN_KEYS}
        ),
        folded AS (
            SELECT a.series_id, a.version,
                   flatten(list(c.values ORDER BY c.version)) AS values
            FROM numbered a JOIN numbered c
                 ON a.series_id = c.series_id AND a.chain = c.chain AND c.version <= a.version
            WHERE a.base_hash IS NOT NULL
            GROUP BY a.series_id, a.version
        )
        SELECT n.* EXCLUDE (ingested_at, version, chain, base_hash, base_points)
                   REPLACE (coalesce(f.values, n.values) AS values),
               n.ingested_at, n.version
        FROM numbered n LEFT JOIN folded f ON n.series_id = f.series_id AND n.version = f.version
    """,
    # The latest version: only the rows of each series' latest chain are read whole, and a
    # chain's values are concatenated once.
    "series": f"""
        WITH {_KEYED},
        latest AS (
            SELECT *, max(version) OVER (PARTITION BY series_id) AS last
            FROM keys QUALIFY chain = max(chain) OVER (PARTITION BY series_id)
        ),
        chains AS (
            SELECT s.*, k.version, k.last FROM {{series_versions}} s JOIN latest k
            ON {_JOIN_KEYS}
        ),
        folded AS (
            SELECT series_id, flatten(list(values ORDER BY version)) AS values
            FROM chains GROUP BY series_id HAVING count(*) > 1
        )
        SELECT c.* EXCLUDE (ingested_at, version, last, base_hash, base_points)
                   REPLACE (coalesce(f.values, c.values) AS values),
               c.ingested_at, c.version
        FROM chains c LEFT JOIN folded f ON c.series_id = f.series_id
        WHERE c.version = c.last
    """,
    "ingest_runs": "SELECT * FROM {ingest_runs}",
    "ingest_rejects": "SELECT * FROM {ingest_rejects}",
    "expert_forecasts": "SELECT * EXCLUDE (cache) FROM {expert_forecasts}",
    "forecasts": "SELECT * FROM {forecasts} WHERE run_id <> '_empty'",
    # For each series, the rows of the most recent run that forecast it.
    "latest_forecasts": """
        SELECT * FROM forecasts
        QUALIFY created_at = max(created_at) OVER (PARTITION BY series_id)
    """,
    "model_events": "SELECT * FROM {model_events}",
    "model_registry": """
        WITH status AS (
            SELECT model_version, arg_max(event, event_at) AS last_event
            FROM {model_events} GROUP BY model_version
        ),
        champion AS (
            SELECT arg_max(model_version, event_at) AS model_version
            FROM {model_events} WHERE event IN ('promoted', 'rolled_back')
        )
        SELECT v.*, s.last_event,
               CASE WHEN v.model_version = (SELECT model_version FROM champion)
                    THEN 'champion' ELSE 'archived' END AS status
        FROM {model_versions} v LEFT JOIN status s USING (model_version)
    """,
    "backtest_metrics": "SELECT * FROM {backtest_metrics}",
    "leaderboard": """
        SELECT model_version, run_id, model, n_windows, mase, smape, mape, rmse, wql,
               coverage_90, width_90, rank() OVER (PARTITION BY run_id ORDER BY mase) AS rank
        FROM {backtest_metrics} WHERE series_id IS NULL
    """,
    "forecast_evaluations": "SELECT * FROM {forecast_evaluations}",
}

VIEW_NAMES: tuple[str, ...] = tuple(VIEW_SQL)
