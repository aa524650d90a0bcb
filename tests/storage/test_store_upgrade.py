"""A store written by an older version of the code opens with the current schemas."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage import Store
from storage.schemas import TABLE_SCHEMAS
from storage.sql import query


def test_old_placeholders_gain_the_new_columns(tmp_path: Path) -> None:
    """Guards upgrades: an older `backtest_metrics` placeholder (no coverage_90) broke views."""
    store = Store.open(tmp_path / "store")
    schema = TABLE_SCHEMAS["backtest_metrics"]
    older = pa.schema([field for field in schema if field.name not in ("coverage_90", "width_90")])
    placeholders = list(store.table_dir("backtest_metrics").rglob("_empty.parquet"))
    assert len(placeholders) == 1
    pq.write_table(older.empty_table(), placeholders[0])  # as an older version left it
    (store.root / "catalog.version").write_text("an older layout")
    reopened = Store.open(store.root)
    assert pq.read_schema(placeholders[0]).equals(schema)
    columns = query(reopened, "SELECT * FROM leaderboard LIMIT 0").column_names
    assert "coverage_90" in columns
