"""Batch forecast end to end vs the experts' own compute, with real offline experts.

Usage: ``python benchmarks/bench_forecast_overhead.py [--series 10000] [--experts a,b,c]``

A champion is retrained on the bundled 300 M3 monthly series; then ``--series`` series
(those 300 and jittered copies with their own ids) are stored and one batch forecast runs
over all of them. Each expert is wrapped in a stopwatch (``_Timed``: every ``forecast`` call
adds its wall time, season variants and interval wrappers included), so one run gives both
numbers: the batch forecast's wall time and the time spent inside the two chosen experts'
``forecast`` calls. Everything else (store reads, season detection, the gate, top-2
grouping, intervals, long-format rows, Parquet writes) is the pipeline's overhead.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moe.experts.base import Expert, ExpertCapabilities, ExpertForecast, for_season  # noqa: E402
from pipeline.config import ForecastConfig, RetrainConfig  # noqa: E402
from pipeline.forecast import batch_forecast  # noqa: E402
from pipeline.retrain import retrain  # noqa: E402
from pipeline.training_data import build_experts_for  # noqa: E402
from storage import Store, ingest_jsonl  # noqa: E402

SAMPLE = REPO / "pipeline" / "sample_data" / "m3_monthly_sample.jsonl.gz"


@dataclass
class _Clock:
    seconds: float = 0.0
    calls: int = 0


class _Timed:
    """An expert whose ``forecast`` calls add their wall time to a shared clock."""

    def __init__(self, inner: Expert, clock: _Clock) -> None:
        self.inner = inner
        self.clock = clock
        self.name = inner.name
        self.capabilities: ExpertCapabilities = inner.capabilities

    @property
    def cache_key(self) -> str:
        return self.inner.cache_key

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        began = time.perf_counter()
        try:
            return self.inner.forecast(context, horizon)
        finally:
            self.clock.seconds += time.perf_counter() - began
            self.clock.calls += 1

    def with_season_length(self, season_length: int) -> Expert:
        return _Timed(for_season(self.inner, season_length), self.clock)  # type: ignore[return-value]


def _write_series(path: Path, records: list[dict[str, object]], n_series: int) -> None:
    """The sample, then jittered copies (level x U(0.5, 2), 2% noise) up to ``n_series``."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as handle:
        for index in range(n_series):
            record = records[index % len(records)]
            values = np.asarray(record["sequence"], np.float64)
            if index >= len(records):
                values = values * rng.uniform(0.5, 2.0) * (1 + 0.02 * rng.normal(size=values.size))
            out = {
                "series_id": f"s{index:07d}",
                "start": record.get("start"),
                "freq": record.get("freq"),
                "sequence": np.round(values, 3).tolist(),
            }
            handle.write(orjson.dumps(out) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--experts", default="seasonal_naive,autotheta,dynamic_theta")
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    with gzip.open(SAMPLE, "rt") as handle:
        records = [json.loads(line) for line in handle]
    root = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        store = Store.open(root / "store")
        config = RetrainConfig(
            jsonl_paths=[],
            experts=args.experts.split(","),
            input_length=36,
            pred_length=18,
            forecast_after=False,
        )
        _write_series(root / "sample.jsonl", records, len(records))
        ingest_jsonl(store, root / "sample.jsonl")
        began = time.perf_counter()
        champion = retrain(store, config)
        print(f"champion {champion.model_version} in {time.perf_counter() - began:.0f} s")
        _write_series(root / "all.jsonl", records, args.series)
        ingest_jsonl(store, root / "all.jsonl")
        clock = _Clock()
        experts = [_Timed(expert, clock) for expert in build_experts_for(config)]
        began = time.perf_counter()
        run = batch_forecast(
            store,
            ForecastConfig(chunk_size=args.chunk),
            experts=experts,  # type: ignore[arg-type]
        )
        wall = time.perf_counter() - began
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        shutil.rmtree(root, ignore_errors=True)
    overhead = wall - clock.seconds
    print(
        "| series | rows | experts | batch forecast s | inside experts s | overhead s | "
        "end to end / experts | expert calls | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {run.n_series:,} | {run.n_rows:,} | {args.experts} | {wall:.1f} | "
        f"{clock.seconds:.1f} | {overhead:.1f} | {wall / clock.seconds:.3f}x | "
        f"{clock.calls} | {peak:.0f} |"
    )


if __name__ == "__main__":
    main()
