"""Parse and type one ingest chunk: per-line orjson+numpy against whole-block JSON readers.

Usage: ``python benchmarks/bench_json_parsers.py [--lines 10000] [--points 500] [--repeats 3]``

Measures only the step a block reader would replace in ``moe ingest`` (bytes of one chunk to
float64 values per series), best of ``--repeats``. ``orjson + numpy`` is the per-line
decode-and-type core; ``parse_line`` is the full per-line validator (its fast path);
``checked path`` is the slow path that words every reject (the only path before the fast
one). The block readers return a typed Arrow table (``series_id`` string, ``sequence``
list<double>) of the same lines.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.json as pa_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage.records import _parse_checked, parse_line  # noqa: E402

_SCHEMA = pa.schema([("series_id", pa.string()), ("sequence", pa.list_(pa.float64()))])


def _block(n_lines: int, n_points: int) -> bytes:
    rng = np.random.default_rng(0)
    lines = []
    for index in range(n_lines):
        values = (rng.normal(size=n_points) * 100).round(3).tolist()
        lines.append(orjson.dumps({"series_id": f"s{index}", "sequence": values}))
    return b"\n".join(lines) + b"\n"


def _best(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    block = _block(args.lines, args.points)
    lines = block.splitlines()
    scratch = Path(tempfile.mkdtemp(prefix="bench-json-"))
    path = scratch / "block.jsonl"
    path.write_bytes(block)

    def arrow(threads: bool) -> Callable[[], object]:
        options = pa_json.ReadOptions(use_threads=threads, block_size=1 << 22)
        parse = pa_json.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")
        return lambda: pa_json.read_json(
            io.BytesIO(block), read_options=options, parse_options=parse
        )

    def duck(threads: int) -> Callable[[], object]:
        connection = duckdb.connect()
        connection.execute(f"SET threads = {threads}")
        sql = (
            "SELECT * FROM read_json($1, format='newline_delimited', "
            "columns={series_id: 'VARCHAR', sequence: 'DOUBLE[]'})"
        )
        return lambda: connection.sql(sql, params=[str(path)]).to_arrow_table()

    candidates: list[tuple[str, Callable[[], object]]] = [
        (
            "orjson + numpy per line",
            lambda: [np.array(orjson.loads(line)["sequence"]) for line in lines],
        ),
        ("parse_line (fast path)", lambda: [parse_line(line) for line in lines]),
        ("checked path (every check)", lambda: [_parse_checked(line) for line in lines]),
        ("pyarrow.json 1 thread", arrow(False)),
        ("pyarrow.json threads", arrow(True)),
        ("duckdb read_json 1 thread", duck(1)),
        ("duckdb read_json 2 threads", duck(2)),
    ]
    size_mb = len(block) / 2**20
    print(f"{args.lines} lines x {args.points} points, {size_mb:.0f} MB, best of {args.repeats}")
    print(f"{'reader':>30} {'seconds':>8} {'MB/s':>7} {'vs orjson':>9}")
    timings = [(name, _best(run, args.repeats)) for name, run in candidates]
    reference = timings[0][1]
    for name, seconds in timings:
        print(f"{name:>30} {seconds:>8.3f} {size_mb / seconds:>7.0f} {reference / seconds:>8.2f}x")
    path.unlink()
    scratch.rmdir()


if __name__ == "__main__":
    main()
