"""Sharded steps on Dask: in-process vs a LocalCluster of 1 and 2 worker processes.

Usage: ``python benchmarks/bench_sharding.py [--series 2000] [--windows 3] [--shards 4]``

Real offline experts (``seasonal_naive`` + ``autoets``: AutoETS is the CPU-heavy one), on
synthetic monthly series. For each mode it times, on a fresh store, the retrain's cache
fill (``training_data.fill_cache``: every window once per expert) and then the batch
forecast of every series with one model (trained once, in-process). The cluster is started
and warmed (one shard-sized task that imports the package and compiles the experts) before
the timed steps; its start and warm-up are reported apart. Per-shard overhead: a cache fill
whose windows are all cached, on one worker, with few vs many shards (the difference per
extra shard is the cost of a shard that does no expert work).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

EXPERTS = ["seasonal_naive", "autoets"]


def _write_series(path: Path, n_series: int, length: int) -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(length)
    with open(path, "wb") as handle:
        for index in range(n_series):
            level = rng.uniform(50, 500)
            season = level * 0.2 * np.sin(2 * np.pi * (steps + rng.integers(12)) / 12)
            trend = level * rng.uniform(-0.004, 0.004) * steps
            values = level + season + trend + rng.normal(0, level * 0.05, length)
            record = {
                "series_id": f"s{index:06d}",
                "start": "2015-01-01",
                "freq": "MS",
                "sequence": np.round(values, 3).tolist(),
            }
            handle.write(orjson.dumps(record) + b"\n")


WINDOWS_PER_SERIES = 3  # set from --windows


def _config(jsonl: Path, dask: dict | None):  # -> RetrainConfig
    from pipeline.config import RetrainConfig

    return RetrainConfig.model_validate(
        {
            "jsonl_paths": [str(jsonl)],
            "experts": EXPERTS,
            "input_length": 36,
            "pred_length": 12,
            "season_length": 12,
            "max_windows_per_series": WINDOWS_PER_SERIES,
            "forecast_after": False,
            "dask": dask,
        }
    )


def _fill(root: Path, jsonl: Path, dask: dict | None) -> tuple[float, int]:
    from pipeline.training_data import build_experts_for, fill_cache, prepare_windows
    from storage import Store, ingest_jsonl

    store = Store.open(root)
    ingest_jsonl(store, jsonl)
    config = _config(jsonl, dask)
    _, windows = prepare_windows(store, config)
    experts = build_experts_for(config)
    started = time.perf_counter()
    stats = fill_cache(store, experts, windows, config)
    seconds = time.perf_counter() - started
    assert all(s.computed == s.distinct for s in stats), stats
    return seconds, sum(s.computed for s in stats)


def _forecast(root: Path, dask: dict | None, run_id: str) -> tuple[float, int]:
    from pipeline.config import ForecastConfig
    from pipeline.forecast import batch_forecast
    from storage import Store

    started = time.perf_counter()
    config = ForecastConfig.model_validate({"run_id": run_id, "dask": dask})
    run = batch_forecast(Store.open(root), config)
    return time.perf_counter() - started, run.n_series


def _warm(dask: dict, root: Path, jsonl: Path) -> tuple[float, float]:
    """Start the cluster (seconds) and warm every worker (seconds): each imports the package
    and runs the experts once on a few windows, as a first real shard would."""
    from pipeline.config import DaskConfig
    from pipeline.sharding import _local_cluster, dask_client
    from pipeline.training_data import fill_cache_shard

    settings = DaskConfig.model_validate(dask)
    started = time.perf_counter()
    _local_cluster(settings)
    start = time.perf_counter() - started
    started = time.perf_counter()
    config = _config(jsonl, None)
    context = np.random.default_rng(1).uniform(1, 2, (4, config.input_length)).astype(np.float32)
    with dask_client(settings) as client:
        workers = list(client.scheduler_info()["workers"])
        futures = [
            client.submit(fill_cache_shard, str(root), config, context, 12, workers=[w], pure=False)
            for w in workers
        ]
        client.gather(futures)
    return start, time.perf_counter() - started


def _warm_here(root: Path, jsonl: Path) -> float:
    """The in-process twin of ``_warm``: the same first shard, run here."""
    from pipeline.training_data import fill_cache_shard

    config = _config(jsonl, None)
    context = np.random.default_rng(1).uniform(1, 2, (4, config.input_length)).astype(np.float32)
    started = time.perf_counter()
    fill_cache_shard(str(root), config, context, 12)
    return time.perf_counter() - started


def _shard_overhead(root: Path, jsonl: Path) -> float:
    """Seconds per extra shard on one worker when every window is already cached."""
    from pipeline.training_data import build_experts_for, fill_cache, prepare_windows
    from storage import Store

    store = Store.open(root)
    times = {}
    for shards in (2, 18):
        config = _config(jsonl, {"address": "local", "workers": 1, "shards": shards})
        _, windows = prepare_windows(store, config)
        experts = build_experts_for(config)
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            fill_cache(store, experts, windows, config)
            best = min(best, time.perf_counter() - started)
        times[shards] = best
    return (times[18] - times[2]) / 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--length", type=int, default=72)
    parser.add_argument("--shards", type=int, default=4, help="shards per step on Dask")
    parser.add_argument("--windows", type=int, default=3, help="windows per series (>= 3)")
    args = parser.parse_args()
    global WINDOWS_PER_SERIES
    WINDOWS_PER_SERIES = args.windows

    from pipeline.retrain import retrain
    from pipeline.sharding import close_local_clusters
    from storage import Store

    folder = Path(tempfile.mkdtemp(prefix="bench-sharding-"))
    try:
        jsonl = folder / "series.jsonl"
        _write_series(jsonl, args.series, args.length)
        modes: list[tuple[str, dict | None]] = [("in-process", None)]
        for workers in (1, 2):
            modes.append(
                (
                    f"Dask {workers} worker{'s' if workers > 1 else ''}",
                    {"address": "local", "workers": workers, "shards": args.shards},
                )
            )
        model_store = folder / "model"
        rows = []
        for name, dask in modes:
            root = folder / name.replace(" ", "-")
            start, warm = float("nan"), _warm_here(root, jsonl)
            if dask is not None:
                start, warm = _warm(dask, root, jsonl)
            fill, windows = _fill(root, jsonl, dask)
            if dask is None:  # one model for every mode's forecast
                retrain(Store.open(root), _config(jsonl, None))
                shutil.copytree(root, model_store)
            forecast, n_series = _forecast(model_store, dask, name.replace(" ", "-"))
            rows.append((name, start, warm, fill, windows, forecast, n_series))
            close_local_clusters()
        overhead = _shard_overhead(folder / "in-process", jsonl)
        close_local_clusters()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(
        f"\n{args.series} series x {args.length} points ({args.windows} windows each), "
        f"experts {EXPERTS}, {args.shards} shards per step on Dask\n"
    )
    print(
        "| mode | cluster start (s) | worker warm-up (s) | cache fill (s) | window-experts/s "
        "| batch forecast (s) | series/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    base_fill, base_forecast = rows[0][3], rows[0][5]
    for name, start, warm, fill, windows, forecast, n_series in rows:
        print(
            f"| {name} | {start:.1f} | {warm:.1f} | {fill:.1f} ({base_fill / fill:.2f}x) "
            f"| {windows / fill:.0f} | {forecast:.1f} ({base_forecast / forecast:.2f}x) "
            f"| {n_series / forecast:.0f} |"
        )
    print(f"\nper-shard overhead (1 worker, all windows cached): {overhead * 1000:.0f} ms/shard")


if __name__ == "__main__":
    main()
