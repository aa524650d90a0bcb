"""Ingest throughput and peak memory: ours against DuckDB's own ``read_json`` into a table.

Usage: ``python benchmarks/bench_ingest.py [--series 20000 100000] [--points 500] [--repeats 3]
[--baseline GIT_REV]``

Each measurement runs in a fresh subprocess so its peak RSS is its own. DuckDB's loader is
the practical limit (multi-threaded C++ that records nothing about bad lines); ours
validates every line, hashes content for idempotence and writes Parquet parts.

The machine is shared, so one run of each tool says little: each size is measured
``--repeats`` rounds, the tools in a rotating order within a round, and the table gives
median seconds and the range of the per-round ratio (DuckDB's seconds over the tool's, in
the same round), with the 1-minute load average seen at the start and end. ``--baseline``
adds ``moe ingest`` as of another commit (e.g. ``main``) to the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]


def _make_file(path: Path, n_series: int, n_points: int) -> None:
    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:
        for index in range(n_series):
            values = (rng.normal(size=n_points) * 100).round(3).tolist()
            handle.write(orjson.dumps({"series_id": f"s{index}", "sequence": values}) + b"\n")


def _worker(tool: str, data: Path, scratch: Path) -> None:
    sys.path.insert(0, str(REPO))
    import duckdb  # imports and store creation are setup, not measured

    from storage import Store, ingest_jsonl

    store = Store.open(scratch / "store")
    start = time.perf_counter()
    if tool == "ours":
        report = ingest_jsonl(store, data)
        rows = report.accepted
    else:
        connection = duckdb.connect(str(scratch / "duck.duckdb"))
        if tool == "duckdb-1thread":
            connection.execute("SET threads = 1")
        connection.execute(
            "CREATE TABLE series AS SELECT * FROM read_json($1, format='newline_delimited')",
            [str(data)],
        )
        counted = connection.execute("SELECT count(*) FROM series").fetchone()
        assert counted is not None  # count(*) always returns one row
        rows = counted[0]
        connection.close()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_mb": peak_mb}))


def _measure(tool: str, data: Path, baseline: Path | None = None) -> dict[str, float]:
    """One run of ``tool`` (``baseline``: ours from that source tree) in a fresh process."""
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{tool}-"))
    if tool == "baseline":
        if baseline is None:
            raise ValueError("tool 'baseline' needs the baseline source tree")
        script = str(baseline / "benchmarks" / "bench_ingest.py")
    else:
        script = __file__
    worker_tool = "ours" if tool == "baseline" else tool
    try:
        out = subprocess.run(
            [sys.executable, script, "--worker", worker_tool, str(data), str(scratch)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--baseline",
        metavar="GIT_REV",
        help="also measure `moe ingest` as of this commit (e.g. main), in the same rounds",
    )
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    tools = {"duckdb": "duckdb", "duckdb-1thread": "duckdb 1 thread", "ours": "moe ingest"}
    baseline = None
    if args.baseline:
        baseline = workdir / "baseline"
        baseline.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.baseline], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive, check=True)
        tools["baseline"] = f"@{args.baseline}"[:15]
    print(
        f"{'series':>8} {'points':>6} {'file MB':>8} {'tool':>15} {'seconds':>8} "
        f"{'rows/s':>9} {'vs duckdb':>9} {'per round':>13} {'peak MB':>8} {'load':>9}"
    )
    try:
        for n_series in args.series:
            data = workdir / f"s{n_series}.jsonl"
            _make_file(data, n_series, args.points)
            size_mb = data.stat().st_size / 2**20
            load_before = os.getloadavg()[0]
            runs: dict[str, list[dict[str, float]]] = {tool: [] for tool in tools}
            order = list(tools)
            for _ in range(args.repeats):
                for tool in order:
                    runs[tool].append(_measure(tool, data, baseline))
                order = order[1:] + order[:1]  # rotate: no tool always runs first
            load = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
            duck = statistics.median(run["seconds"] for run in runs["duckdb"])
            for tool, name in tools.items():
                seconds = statistics.median(run["seconds"] for run in runs[tool])
                rows = runs[tool][0]["rows"]
                per_round = [
                    d["seconds"] / r["seconds"]
                    for d, r in zip(runs["duckdb"], runs[tool], strict=True)
                ]
                spread = f"{min(per_round):.2f}-{max(per_round):.2f}x"
                peak = max(run["peak_mb"] for run in runs[tool])
                print(
                    f"{n_series:>8} {args.points:>6} {size_mb:>8.0f} {name:>15} "
                    f"{seconds:>8.2f} {rows / seconds:>9.0f} {duck / seconds:>8.2f}x "
                    f"{spread:>13} {peak:>8.0f} {load:>9}"
                )
            data.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
