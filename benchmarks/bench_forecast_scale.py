"""Batch forecast at scale: peak memory stays flat as the number of series grows.

Usage: ``python benchmarks/bench_forecast_scale.py [--series 10000 100000] [--chunk 2048]``

Measures our chunked pipeline (store reads, routing, long-format rows, Parquet writes), not
the experts: it uses the deterministic fake experts of the test suite (one vectorised op per
batch), so the numbers are the pipeline's own cost. Each size runs in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _setup(root: Path, n_series: int) -> None:
    """Ingest ``n_series`` series and register a gate trained on the fake experts."""
    from moe.experts.fake import fake_trio
    from moe.training import TrainConfig
    from pipeline.config import RetrainConfig
    from pipeline.retrain import retrain
    from storage import Store, ingest_jsonl

    store = Store.open(root / "store")
    data = root / "series.jsonl"
    rng = np.random.default_rng(0)
    with open(data, "wb") as handle:
        for index in range(n_series):
            values = (100 + rng.normal(size=72).cumsum()).round(3).tolist()
            record = {"series_id": f"s{index:07d}", "start": "2020-01-01", "freq": "MS"}
            handle.write(orjson.dumps({**record, "sequence": values}) + b"\n")
    ingest_jsonl(store, data)
    config = RetrainConfig(
        input_length=24,
        pred_length=12,
        max_windows_per_series=2,
        forecast_after=False,
        train=TrainConfig(epochs=1, batch_size=256),
    )
    retrain(store, config, experts=fake_trio())
    print(json.dumps({}))


def _forecast(root: Path, chunk: int) -> None:
    """The measured part, in its own process: batch forecast over every stored series."""
    from moe.experts.fake import fake_trio
    from pipeline.config import ForecastConfig
    from pipeline.forecast import batch_forecast
    from storage import Store

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    config = ForecastConfig(chunk_size=chunk)
    run = batch_forecast(Store.open(root / "store"), config, experts=fake_trio())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps({"rows": run.n_rows, "seconds": seconds, "peak_mb": peak, "imports_mb": before})
    )


def _run(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--setup", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--forecast", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        return _setup(Path(args.setup[0]), int(args.setup[1]))
    if args.forecast:
        return _forecast(Path(args.forecast[0]), int(args.forecast[1]))
    print(
        f"{'series':>8} {'chunk':>6} {'rows':>9} {'seconds':>8} {'series/s':>9} "
        f"{'RSS after imports MB':>21} {'peak RSS MB':>12}"
    )
    for n_series in args.series:
        root = Path(tempfile.mkdtemp(prefix="bench-forecast-"))
        try:
            _run("--setup", str(root), str(n_series))
            result = _run("--forecast", str(root), str(args.chunk))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(
            f"{n_series:>8} {args.chunk:>6} {result['rows']:>9} {result['seconds']:>8.1f} "
            f"{n_series / result['seconds']:>9.0f} {result['imports_mb']:>21.0f} "
            f"{result['peak_mb']:>12.0f}"
        )
    print(
        "(fake experts, so this is the pipeline's own cost; peak RSS of the forecasting "
        "process, which reads the store, routes, and writes Parquet chunk by chunk)"
    )


if __name__ == "__main__":
    main()
