"""The expert-forecast cache: one row per (expert model, lengths, window content).

Keyed by content, so a rerun on the same data finds everything, new series add only what
is missing, and an interrupted precompute keeps every part that landed. Arrays only
(NumPy); the torch side is in ``moe.precompute``.

Layout on read: ``points`` ``(N, E, H)`` float32 and ``quantiles`` ``(N, E, H, Q)``
float32, NaN where an expert has no quantiles; ``N`` follows the requested windows and
``E`` the requested experts.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from storage.store import Store

__all__ = [
    "CachedModel",
    "window_hashes",
    "cached_window_hashes",
    "write_forecasts",
    "read_forecasts",
]

_TABLE = "expert_forecasts"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class CachedModel:
    """Which cache partition: an expert's exact model and the window lengths.

    ``aliases``: older spellings of ``cache_key`` for the same model (an expert's
    ``legacy_cache_keys``). Reads include the rows stored under them; writes use ``cache_key``.
    """

    expert: str
    cache_key: str
    input_length: int
    pred_length: int
    aliases: tuple[str, ...] = ()

    @property
    def partition(self) -> dict[str, str]:
        digest = hashlib.blake2b(self.cache_key.encode(), digest_size=6).hexdigest()
        name = _SAFE.sub("_", self.expert)
        return {"cache": f"{name}-{digest}-L{self.input_length}-H{self.pred_length}"}


def window_hashes(context: np.ndarray) -> list[str]:
    """Content hash of each row of ``context`` ``(N, L)`` (as float32, NaN canonicalised)."""
    rows = np.ascontiguousarray(context, dtype=np.float32)
    if np.isnan(rows).any():
        rows = np.where(np.isnan(rows), np.float32(np.nan), rows)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in rows]


def _read_partition(store: Store, model: CachedModel, columns: list[str]) -> pa.Table | None:
    """The model's rows, those stored under its ``aliases`` first (a reader keeps the last)."""
    spellings = [replace(model, cache_key=key, aliases=()) for key in model.aliases] + [model]
    files = [f for spelling in spellings for f in store.part_locations(_TABLE, spelling.partition)]
    if not files:
        return None
    return pa.concat_tables([store.read_part(f, columns) for f in files])


def cached_window_hashes(store: Store, model: CachedModel) -> set[str]:
    """Window hashes already cached for ``model``."""
    table = _read_partition(store, model, ["window_hash"])
    return set() if table is None else set(table.column("window_hash").to_pylist())


# The hashes of the partition last written, and which part files they came from: a
# precompute writes many batches into one partition, and re-reading every part for each
# batch would grow quadratically. One entry only, so a long-lived worker holds no more.
_LAST_SEEN: dict[str, tuple[set[str], set[str]]] = {}


def _cached_incrementally(store: Store, model: CachedModel) -> set[str]:
    """``cached_window_hashes``, reading only part files not seen by the previous call."""
    key = store.table_location(_TABLE, model.partition)
    files_seen, hashes = _LAST_SEEN.get(key, (set(), set()))
    if key not in _LAST_SEEN:
        _LAST_SEEN.clear()
    current = set(store.part_locations(_TABLE, model.partition))
    if not files_seen <= current:  # a part vanished (store rebuilt): start over
        files_seen, hashes = set(), set()
    for location in sorted(current - files_seen):
        table = store.read_part(location, ["window_hash"])
        hashes.update(table.column("window_hash").to_pylist())
    _LAST_SEEN[key] = (current, hashes)
    return hashes


def write_forecasts(
    store: Store,
    model: CachedModel,
    hashes: Sequence[str],
    point: np.ndarray,
    quantiles: np.ndarray | None,
    part_name: str | None = None,
) -> None:
    """Store one batch: ``point`` ``(n, H)``, ``quantiles`` ``(n, H, Q)`` or None.

    Under the store's writer lock, windows another writer cached meanwhile are dropped, so
    two precomputes of the same windows at once leave one row per window.
    """
    n, pred_length = point.shape
    if n != len(hashes) or pred_length != model.pred_length:
        raise ValueError(
            f"point has shape {point.shape}, expected ({len(hashes)}, {model.pred_length})"
        )
    with store.writer():
        done = _cached_incrementally(store, model)
        keep = np.fromiter((h not in done for h in hashes), bool, count=n)
        if not keep.all():
            hashes = [h for h, k in zip(hashes, keep, strict=True) if k]
            point = point[keep]
            quantiles = None if quantiles is None else quantiles[keep]
            n = len(hashes)
        if n:
            _write_batch(store, model, hashes, point, quantiles, part_name)


def _write_batch(
    store: Store,
    model: CachedModel,
    hashes: Sequence[str],
    point: np.ndarray,
    quantiles: np.ndarray | None,
    part_name: str | None,
) -> None:
    n, pred_length = point.shape
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * pred_length)
    point_list = pa.ListArray.from_arrays(offsets, pa.array(point.astype(np.float32).ravel()))
    if quantiles is None:
        quantile_list = pa.nulls(n, pa.list_(pa.float32()))
    else:
        width = quantiles.shape[1] * quantiles.shape[2]
        flat = pa.array(quantiles.astype(np.float32).reshape(n * width))
        quantile_list = pa.ListArray.from_arrays(
            pa.array(np.arange(n + 1, dtype=np.int32) * width), flat
        )
    table = pa.table(
        {
            "expert": pa.array([model.expert] * n),
            "cache_key": pa.array([model.cache_key] * n),
            "input_length": pa.array([model.input_length] * n, pa.int32()),
            "pred_length": pa.array([model.pred_length] * n, pa.int32()),
            "window_hash": pa.array(list(hashes)),
            "point": point_list,
            "quantiles": quantile_list,
            "computed_at": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
        }
    )
    # Uncompressed: model outputs barely compress, and bulk reads are 4x faster without zstd.
    name = part_name or uuid.uuid4().hex
    store.write_part(_TABLE, name, table, partition=model.partition, compression="none")


def _list_to_matrix(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A list<float> column of equal-length lists (or all-null chunks) -> ``(rows, width)``."""
    blocks = []
    for chunk in column.chunks:
        if chunk.null_count == len(chunk):
            blocks.append(np.full((len(chunk), width), np.nan, np.float32))
        else:
            values = chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            blocks.append(values.reshape(len(chunk), width))
    return np.concatenate(blocks) if blocks else np.empty((0, width), np.float32)


def read_forecasts(
    store: Store,
    models: Sequence[CachedModel],
    hashes: Sequence[str],
    n_quantiles: int | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Cached forecasts for ``hashes`` (length N) from each of ``models`` (E of them).

    Returns ``points`` ``(N, E, H)``, ``quantiles`` ``(N, E, H, Q)`` (NaN where absent;
    None when ``n_quantiles`` is None, which skips reading them) and ``found`` ``(N, E)``.
    Rows not in the cache are NaN with ``found`` False.
    """
    if not models:
        raise ValueError("no models given")
    pred_length = models[0].pred_length
    n = len(hashes)
    # Filled expert by expert in contiguous (E, N, ...) blocks, returned as (N, E, ...) views:
    # scattering into an interleaved expert axis was the slow part of the read.
    points_by_expert = _nan_array((len(models), n, pred_length))
    quantiles_by_expert = (
        None if n_quantiles is None else _nan_array((len(models), n, pred_length, n_quantiles))
    )
    found = np.zeros((n, len(models)), bool)
    columns = ["window_hash", "point"] + ([] if quantiles_by_expert is None else ["quantiles"])
    for e, model in enumerate(models):
        table = _read_partition(store, model, columns)
        if table is None:
            continue
        position = {h: i for i, h in enumerate(table.column("window_hash").to_pylist())}
        rows = np.fromiter((position.get(h, -1) for h in hashes), np.int64, count=n)
        hit = rows >= 0
        found[:, e] = hit
        points_by_expert[e, hit] = _list_to_matrix(table.column("point"), pred_length)[rows[hit]]
        if quantiles_by_expert is not None and n_quantiles is not None:
            stored = _list_to_matrix(table.column("quantiles"), pred_length * n_quantiles)
            quantiles_by_expert[e, hit] = stored[rows[hit]].reshape(-1, pred_length, n_quantiles)
    points = np.moveaxis(points_by_expert, 0, 1)
    quantiles = None if quantiles_by_expert is None else np.moveaxis(quantiles_by_expert, 0, 1)
    return points, quantiles, found


def _nan_array(shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(shape, np.float32)
    array.fill(np.nan)  # measured faster than np.full for large arrays here
    return array
