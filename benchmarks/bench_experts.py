"""Foundation experts at full size with random weights: our adapter against the library's own
batch API on identical inputs (windows per second). Random weights: throughput only, never
accuracy.

Usage: ``python -m benchmarks.bench_experts [--experts moirai,timemoe,timesfm]
[--batch-sizes 1 32 256] [--input-length 512] [--pred-length 64] [--repeats 1]
[--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
from typing import Any


def _moirai(args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks._bench_moirai import bench_moirai

    rows = bench_moirai(
        args.batch_sizes,
        args.input_length,
        args.pred_length,
        args.repeats,
        methods=("adapter", "native_predictor"),
        device=args.device,
    )
    by_batch: dict[int, dict[str, float]] = {}
    for row in rows:
        by_batch.setdefault(row["batch_size"], {})[row["method"]] = row["windows_per_s"]
    return [
        {
            "expert": "moirai-moe-1.0-R-small",
            "batch_size": batch,
            "ours": rates["adapter"],
            "native": rates["native_predictor"],
            "native_api": "MoiraiMoEForecast predictor",
        }
        for batch, rates in by_batch.items()
    ]


def _paired(name: str, rows: list[dict[str, Any]], api: str) -> list[dict[str, Any]]:
    return [
        {
            "expert": name,
            "batch_size": row["batch_size"],
            "ours": row["ours_windows_per_s"],
            "native": row["native_windows_per_s"],
            "native_api": api,
        }
        for row in rows
    ]


def _timemoe(args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks._bench_timemoe import bench_timemoe

    rows = bench_timemoe(
        args.batch_sizes, args.input_length, args.pred_length, args.repeats, device=args.device
    )
    return _paired("timemoe-50m", rows, "forward(use_cache=False) rollout")


def _timesfm(args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks._bench_timesfm import bench_timesfm

    rows = bench_timesfm(
        args.batch_sizes, args.input_length, args.pred_length, args.repeats, device=args.device
    )
    return _paired("timesfm-2.5-200m", rows, "TimesFm2_5ModelForPrediction(past_values)")


RUNNERS = {"moirai": _moirai, "timemoe": _timemoe, "timesfm": _timesfm}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--experts", default="moirai,timemoe,timesfm")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--pred-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(
        f"{'expert':<24} {'batch':>5} {'ours win/s':>11} {'native win/s':>13} {'ratio':>6}  "
        f"native API"
    )
    for name in args.experts.split(","):
        for row in RUNNERS[name](args):
            ratio = row["ours"] / row["native"]
            print(
                f"{row['expert']:<24} {row['batch_size']:>5} {row['ours']:>11.2f} "
                f"{row['native']:>13.2f} {ratio:>6.2f}  {row['native_api']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
