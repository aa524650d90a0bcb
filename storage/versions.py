"""Series versions stored as appends: a new version that only adds points at the end.

A re-ingested series whose stored latest version is an exact prefix of it (same ``start``
and ``freq``, the same first ``n`` values) is stored as an *append row*: ``values`` holds
only the new points, ``base_points`` says how many come before them and ``base_hash`` names
the version they extend. ``content_hash``, ``n_points`` and ``n_missing`` stay those of the
full series, so dedupe and every reader see full versions; the ``series`` and
``series_versions`` views (``storage.schemas``) join an append to the rows before it.

The prefix test needs no stored values: the latest version's ``content_hash`` is compared
with the hash of the new series cut to the latest's length. Memory stays one entry per
series id, as for dedupe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from storage.records import SeriesRecord
from storage.store import Store

__all__ = ["LatestVersion", "latest_versions", "append_base", "encode_appends"]


class LatestVersion(NamedTuple):
    """What ingest knows of a series' stored latest version."""

    content_hash: str
    n_points: int


def latest_versions(store: Store) -> dict[str, LatestVersion]:
    """Every series' latest ``content_hash`` and length (no values are read)."""
    connection = store.connect()
    try:
        rows = connection.execute("SELECT series_id, content_hash, n_points FROM series").fetchall()
    finally:
        connection.close()
    return {series_id: LatestVersion(digest, int(n)) for series_id, digest, n in rows}


def append_base(
    record: SeriesRecord,
    latest: LatestVersion | None,
    content_hash: Callable[[SeriesRecord], str],
) -> LatestVersion | None:
    """``latest`` when ``record`` is ``latest`` plus points at the end, else None.

    ``content_hash`` is ingest's hash, so the cut record hashes exactly like the stored one.
    """
    if latest is None or not 0 < latest.n_points < len(record.values):
        return None
    head = record.values[: latest.n_points]
    cut = SeriesRecord(record.series_id, head, int(np.isnan(head).sum()), record.start, record.freq)
    return latest if content_hash(cut) == latest.content_hash else None


def encode_appends(table: pa.Table, appends: dict[str, LatestVersion]) -> pa.Table:
    """``table`` (full ``series_versions`` rows) with append rows cut to their new points.

    Rows whose ``series_id`` is in ``appends`` keep only the values after the base's
    ``n_points`` and get ``base_hash``/``base_points``; the others get nulls there.
    """
    if appends:
        bases = [appends.get(series_id) for series_id in table.column("series_id").to_pylist()]
    else:  # the common first ingest: no row is an append
        bases = [None] * table.num_rows
    base_points = np.array([0 if b is None else b.n_points for b in bases], np.int64)
    base_hash = pa.array([None if b is None else b.content_hash for b in bases], pa.string())
    points = pa.array([None if b is None else b.n_points for b in bases], pa.int32())
    if base_points.any():
        values = table.column("values").combine_chunks()
        offsets = values.offsets.to_numpy()
        flat = values.values.slice(offsets[0], offsets[-1] - offsets[0])
        starts = offsets[:-1] - offsets[0]
        # Positions of each append row's first base_points values, dropped from the flat array.
        repeated = np.repeat(starts, base_points)
        within = np.arange(base_points.sum()) - np.repeat(
            np.cumsum(base_points) - base_points, base_points
        )
        keep = np.ones(len(flat), bool)
        keep[repeated + within] = False
        lengths = np.diff(offsets) - base_points
        new_offsets = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=new_offsets[1:])
        cut = pa.ListArray.from_arrays(pa.array(new_offsets), flat.filter(pa.array(keep)))
        table = table.set_column(table.schema.get_field_index("values"), "values", cut)
    for name, column in (("base_hash", base_hash), ("base_points", points)):
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
        else:
            table = table.append_column(name, column)
    return table
