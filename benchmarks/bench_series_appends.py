"""Daily appends: stored bytes and read time with append rows against full copies.

Usage: ``python benchmarks/bench_series_appends.py [--series 10000] [--points 365] [--days 30]``

Day 0 ingests every series with ``--points`` values; each following day re-ingests every
series with one more point (the usual daily feed: whole series, one new observation). The
"full copies" store is the same code with the append decision turned off (what the store
did before: each changed series stored whole). Then both stores are compacted
(``moe store compact``, every version kept) and the deltas store once more with
``--keep-versions 1``. Prints one table; "read latest s" is the best of 3 reads of every
series' latest version through the ``series`` view, as Arrow.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import storage.ingest as ingest_module  # noqa: E402
from storage import Store, ingest_jsonl  # noqa: E402
from storage.compaction import compact_store  # noqa: E402
from storage.sql import query  # noqa: E402


def _day_file(path: Path, values: np.ndarray, n_points: int) -> None:
    with open(path, "wb") as handle:
        for index, row in enumerate(values):
            line = {
                "series_id": f"s{index}",
                "sequence": row[:n_points].tolist(),
                "start": "2025-01-01",
                "freq": "D",
            }
            handle.write(orjson.dumps(line) + b"\n")


def _bytes(store: Store) -> tuple[int, int]:
    parts = [p for p in store.part_files("series_versions") if p.name != "_empty.parquet"]
    return sum(p.stat().st_size for p in parts), len(parts)


def _stored_values(store: Store) -> int:
    total = 0
    for part in store.part_files("series_versions"):
        column = pq.read_table(part, columns=["values"]).column("values")
        total += sum(len(chunk.flatten()) for chunk in column.chunks)
    return total


# The `series` view as it was before appends existed (every version's values carried
# through its window), for the read-time comparison on the full-copies store.
_PREVIOUS_SERIES_VIEW = """
SELECT series_id, content_hash, start, freq, values FROM (
    SELECT *, row_number() OVER (PARTITION BY series_id
                                 ORDER BY ingested_at, ingest_id, source_line) AS version
    FROM read_parquet($1, union_by_name=true)
) QUALIFY version = max(version) OVER (PARTITION BY series_id) ORDER BY series_id
"""


def _previous_view_seconds(store: Store) -> float:
    files = [str(p) for p in store.part_files("series_versions")]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        with duckdb.connect() as connection:
            connection.sql(_PREVIOUS_SERIES_VIEW, params=[files]).to_arrow_table()
        best = min(best, time.perf_counter() - start)
    return best


def _read_seconds(store: Store) -> float:
    """Best of 3: the latest version of every series through the `series` view, as Arrow
    (the same query as the previous view's row above it)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        connection = store.connect()
        try:
            connection.sql(
                "SELECT series_id, content_hash, start, freq, values FROM series ORDER BY 1"
            ).to_arrow_table()
        finally:
            connection.close()
        best = min(best, time.perf_counter() - start)
    return best


def _compacted_row(
    store: Store, mode: str, label: str, keep_versions: int | None
) -> tuple[str, ...]:
    """Compact ``series_versions`` and return its table row (parts, values, MB, read, time)."""
    start = time.perf_counter()
    compact_store(store, ["series_versions"], keep_versions=keep_versions)
    took = time.perf_counter() - start
    size, parts = _bytes(store)
    return (
        mode,
        label,
        f"{parts}",
        f"{_stored_values(store):,}",
        f"{size / 2**20:.1f}",
        "",
        f"{_read_seconds(store):.2f}",
        f"{took:.1f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=365)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    values = (rng.normal(size=(args.series, args.points + args.days)) * 100).round(3)
    scratch = Path(tempfile.mkdtemp(prefix="bench-appends-"))
    rows: list[tuple[str, ...]] = []
    try:
        files = []
        for day in range(args.days + 1):
            path = scratch / f"day{day:03d}.jsonl"
            _day_file(path, values, args.points + day)
            files.append(path)
        latest_checks = {}
        for mode in ("full copies", "appends"):
            store = Store.open(scratch / mode.replace(" ", "-"))
            original = ingest_module.append_base
            if mode == "full copies":
                ingest_module.append_base = lambda *a, **k: None  # type: ignore[assignment]
            try:
                start = time.perf_counter()
                for index, path in enumerate(files):
                    if index == 1:
                        start = time.perf_counter()  # time the daily updates, not day 0
                    ingest_jsonl(store, path)
                daily = (time.perf_counter() - start) / max(args.days, 1)
            finally:
                ingest_module.append_base = original
            size, parts = _bytes(store)
            read = _read_seconds(store)
            latest_checks[mode] = query(
                store, "SELECT series_id, content_hash, values FROM series ORDER BY 1"
            )
            rows.append(
                (
                    mode,
                    "after ingests",
                    f"{parts}",
                    f"{_stored_values(store):,}",
                    f"{size / 2**20:.1f}",
                    f"{daily:.2f}",
                    f"{read:.2f}",
                    "",
                )
            )
            if mode == "full copies":
                previous = _previous_view_seconds(store)
                rows.append(
                    (
                        mode,
                        "same, read with the previous `series` view",
                        "",
                        "",
                        "",
                        "",
                        f"{previous:.2f}",
                        "",
                    )
                )
            rows.append(_compacted_row(store, mode, "compact (all versions)", None))
            if mode == "appends":
                rows.append(_compacted_row(store, mode, "compact --keep-versions 1", 1))
        same = latest_checks["appends"].equals(latest_checks["full copies"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{args.series:,} series, {args.points} points, then {args.days} daily appends "
        f"of 1 point; latest series identical in both stores: {same}\n"
    )
    header = (
        "store",
        "state",
        "parts",
        "values stored",
        "MB",
        "s/daily ingest",
        "read latest s",
        "compact s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
