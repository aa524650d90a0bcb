"""Read the latest version of stored series as NumPy arrays (NaN = missing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from storage.sql import _READ_RETRIES, _is_vanished_part, pause_before_relisting
from storage.store import Store

__all__ = ["StoredSeries", "load_series"]


@dataclass(frozen=True)
class StoredSeries:
    """Latest versions, aligned by position. ``values[i]`` is float64 ``(n_points_i,)``."""

    series_id: list[str]
    content_hash: list[str]
    start: list[str | None]
    freq: list[str | None]
    values: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.series_id)


def _split_values(column: pa.ChunkedArray) -> list[np.ndarray]:
    arrays: list[np.ndarray] = []
    for chunk in column.chunks:
        offsets = chunk.offsets.to_numpy()
        flat = pc.fill_null(chunk.flatten(), float("nan")).to_numpy(zero_copy_only=False)
        base = offsets[0]
        arrays += [
            flat[a - base : b - base] for a, b in zip(offsets[:-1], offsets[1:], strict=True)
        ]
    return arrays


def _read_latest(store: Store, series_ids: Sequence[str] | None) -> pa.Table:
    connection = store.connect()
    try:
        sql = "SELECT series_id, content_hash, start, freq, values FROM series"
        if series_ids is None:
            return connection.sql(sql + " ORDER BY series_id").to_arrow_table()
        wanted = pa.table({"series_id": pa.array(list(series_ids), pa.string())})
        connection.register("wanted_ids", wanted)
        return connection.sql(
            sql + " WHERE series_id IN (SELECT series_id FROM wanted_ids) ORDER BY series_id"
        ).to_arrow_table()
    finally:
        connection.close()


def load_series(store: Store, series_ids: Sequence[str] | None = None) -> StoredSeries:
    """Latest version of every series (or of ``series_ids``), ordered by series_id."""
    for attempt in range(_READ_RETRIES):
        try:
            table = _read_latest(store, series_ids)
            break
        except (duckdb.Error, OSError) as error:
            # A compaction or retention deleted a listed part before it was read: list again.
            if attempt + 1 == _READ_RETRIES or not _is_vanished_part(error):
                raise
            pause_before_relisting(attempt)
    return StoredSeries(
        series_id=table.column("series_id").to_pylist(),
        content_hash=table.column("content_hash").to_pylist(),
        start=table.column("start").to_pylist(),
        freq=table.column("freq").to_pylist(),
        values=_split_values(table.column("values")),
    )
