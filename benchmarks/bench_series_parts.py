"""Parquet settings for an ingest series part: writer CPU and file size per encoding/codec.

Usage: ``python benchmarks/bench_series_parts.py [--rows 10000] [--points 500] [--repeats 4]``

Builds one chunk of ``series_versions`` rows the way ``moe ingest`` does (random values
rounded to 3 decimals, like ``bench_ingest.py``'s file), then writes it with each setting;
CPU seconds of the write (median of ``--repeats``) and the file's size. ``ingest`` is what
``storage.ingest`` uses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.ingest import _Chunk, _series_parquet_options, content_hash  # noqa: E402
from storage.records import SeriesRecord, parse_line  # noqa: E402
from storage.schemas import TABLE_SCHEMAS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    chunk = _Chunk()
    for index in range(args.rows):
        values = (rng.normal(size=args.points) * 100).round(3).tolist()
        record = parse_line(orjson.dumps({"series_id": f"s{index}", "sequence": values}))
        assert isinstance(record, SeriesRecord)
        chunk.series.append((f"s{index}", content_hash(record), record, index + 1))
    schema = TABLE_SCHEMAS["series_versions"]
    table = chunk.series_table("bench.jsonl", "bench", datetime.now(UTC))
    table = table.select(schema.names).cast(schema)
    others = [name for name in schema.names if name != "values"]
    settings: dict[str, dict[str, object]] = {
        "zstd, defaults (before)": {"compression": "zstd"},
        "zstd, no dict/stats on values": {
            "compression": "zstd",
            "use_dictionary": others,
            "write_statistics": others,
        },
        "ingest (zstd + byte split)": {"compression": "zstd", **_series_parquet_options()},
        "snappy + byte split": {"compression": "snappy", **_series_parquet_options()},
        "values uncompressed": {
            "compression": {"values.list.element": "none", **dict.fromkeys(others, "zstd")},
            "use_dictionary": others,
            "write_statistics": others,
        },
    }
    path = Path(tempfile.mkdtemp(prefix="bench-parts-")) / "part.parquet"
    print(f"{args.rows} rows x {args.points} points; median of {args.repeats}")
    print(f"{'setting':>32} {'cpu s':>7} {'MB':>6}")
    for name, options in settings.items():
        seconds = []
        for _ in range(args.repeats):
            start = time.process_time()
            pq.write_table(table, path, **options)  # type: ignore[arg-type]
            seconds.append(time.process_time() - start)
        size_mb = path.stat().st_size / 2**20
        print(f"{name:>32} {statistics.median(seconds):>7.3f} {size_mb:>6.1f}")
    path.unlink()
    path.parent.rmdir()


if __name__ == "__main__":
    main()
