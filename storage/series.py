"""Read the latest version of stored series as NumPy arrays (NaN = missing)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def load_series(store: Store, series_ids: Sequence[str] | None = None) -> StoredSeries:
    """Latest version of every series (or of ``series_ids``), ordered by series_id."""
    connection = store.connect()
    try:
        sql = "SELECT series_id, content_hash, start, freq, values FROM series"
        if series_ids is None:
            table = connection.sql(sql + " ORDER BY series_id").to_arrow_table()
        else:
            wanted = pa.table({"series_id": pa.array(list(series_ids), pa.string())})
            connection.register("wanted_ids", wanted)
            table = connection.sql(
                sql + " WHERE series_id IN (SELECT series_id FROM wanted_ids) ORDER BY series_id"
            ).to_arrow_table()
    finally:
        connection.close()
    return StoredSeries(
        series_id=table.column("series_id").to_pylist(),
        content_hash=table.column("content_hash").to_pylist(),
        start=table.column("start").to_pylist(),
        freq=table.column("freq").to_pylist(),
        values=_split_values(table.column("values")),
    )
