"""Experiment (issue 13): temporal aggregation as a statistical expert, measured.

Not part of the product: a measurement reported in docs/ACCURACY.md ("accuracy15"). The
default pool's best pair is ``stat_ensemble`` (mean of AutoETS, AutoTheta, AutoCES) with
``fracast``; their errors are highly correlated, since all of them model the monthly series
directly. Forecasting the same series at coarser time scales (MAPA, temporal hierarchies)
sees its trend with less noise, so its errors might differ. Per series (observed tail ``y``
of ``n`` points, ``m = 12``):

1. seasonal adjustment: when ``n >= 3m`` and the lag-``m`` autocorrelation passes Theta's
   90% test, classical decomposition (2 x m centred moving average), multiplicative when
   ``min(y) > 0``, else additive; otherwise no adjustment;
2. for ``k`` in 1, 2, 3, 4, 6, 12: the means of the adjusted series' blocks of ``k`` points
   (aligned with its end; a level with fewer than 4 blocks is skipped), forecast
   ``ceil(h / k)`` blocks by a non-seasonal model, each block repeated ``k`` times;
3. the levels' forecasts averaged with equal weights, then reseasonalised.

Variants: ``ta_ets`` (AutoETS per level), ``ta_theta`` (AutoTheta per level), ``ta_both``
(their mean). Each is scored alone and as a fourth member of the statistical mean, with and
without ``fracast`` (which the pair ``stat_ensemble`` + ``fracast`` reaches). One window per
series as in ``exp_fracast_tta.py`` (whose cache of AutoETS, AutoTheta, AutoCES and fracast
this script shares); ``--split development`` (the default) holds out the last ``h`` points
of the training part::

    python benchmarks/exp_temporal_aggregation.py --store /work/bench_store --datasets m3,tourism,m1
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from benchmarks._accuracy_data import DATASETS, BenchSeries, make_windows  # noqa: E402
from benchmarks.exp_fracast_tta import _mase, _split, _versus, cached_forecasts  # noqa: E402
from moe.constant_pair import best_constant_pair  # noqa: E402
from moe.experts.base import Expert, ExpertConfig  # noqa: E402
from moe.experts.registry import build_expert  # noqa: E402
from moe.metrics import naive_scale  # noqa: E402

SEASON = 12
LEVELS = (1, 2, 3, 4, 6, 12)  # block sizes k, in months
MIN_BLOCKS = 4  # a level needs this many blocks to be fitted
BASE_MODELS = {"ta_ets": "autoets", "ta_theta": "autotheta"}
VARIANTS = ("ta_ets", "ta_theta", "ta_both")


def _acf(y: np.ndarray, max_lag: int) -> np.ndarray:
    """Autocorrelations at lags 1..max_lag ``(max_lag,)`` of a 1-D series."""
    centred = y - y.mean()
    denominator = float(np.sum(centred**2))
    if denominator == 0.0:
        return np.zeros(max_lag)
    lags = range(1, max_lag + 1)
    return np.array([np.sum(centred[:-lag] * centred[lag:]) / denominator for lag in lags])


def is_seasonal(y: np.ndarray, m: int) -> bool:
    """Theta's test: the lag-``m`` autocorrelation beyond the 90% band of a moving average."""
    if m < 2 or y.size < 3 * m:
        return False
    acf = _acf(y, m)
    band = 1.645 * math.sqrt((1.0 + 2.0 * float(np.sum(acf[:-1] ** 2))) / y.size)
    return abs(float(acf[-1])) > band


def seasonal_indices(y: np.ndarray, m: int) -> tuple[np.ndarray, bool]:
    """Classical decomposition's seasonal indices ``(m,)`` by position ``t mod m``.

    Returns the indices and whether they are multiplicative (divide) or additive (subtract);
    multiplicative indices average 1, additive ones 0.
    """
    multiplicative = bool(np.min(y) > 0)
    weights = np.r_[0.5, np.ones(m - 1), 0.5] / m if m % 2 == 0 else np.ones(m) / m
    trend = np.convolve(y, weights, mode="valid")  # (n - 2 * (m // 2),) centred
    start = m // 2
    core = y[start : start + trend.size]
    detrended = core / trend if multiplicative else core - trend
    positions = (np.arange(trend.size) + start) % m
    indices = np.array([detrended[positions == p].mean() for p in range(m)])
    if multiplicative:
        return indices / indices.mean(), True
    return indices - indices.mean(), False


def aggregate(adjusted: np.ndarray, k: int) -> np.ndarray | None:
    """Means of the last ``floor(n / k)`` blocks of ``k`` points ``(n // k,)``; None if too few."""
    blocks = adjusted.size // k
    if blocks < MIN_BLOCKS:
        return None
    return adjusted[adjusted.size - blocks * k :].reshape(blocks, k).mean(axis=1)


def _left_padded(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of different lengths as one ``(R, max length)`` matrix, NaN on the left."""
    width = max(row.size for row in rows)
    out = np.full((len(rows), width), np.nan)
    for index, row in enumerate(rows):
        out[index, width - row.size :] = row
    return out


def temporal_aggregation(context: np.ndarray, horizon: int, model: Expert) -> np.ndarray:
    """Point forecasts ``(S, H)`` of the module's procedure; ``context`` ``(S, L)``, NaN-padded.

    ``model`` is a non-seasonal expert (``season_length=1``); each level is one batch call.
    """
    series = [row[np.isfinite(row)] for row in context]
    adjusted: list[np.ndarray] = []
    future_season: list[tuple[np.ndarray, bool] | None] = []
    for y in series:
        if is_seasonal(y, SEASON):
            indices, multiplicative = seasonal_indices(y, SEASON)
            now = indices[np.arange(y.size) % SEASON]
            later = indices[np.arange(y.size, y.size + horizon) % SEASON]
            adjusted.append(y / now if multiplicative else y - now)
            future_season.append((later, multiplicative))
        else:
            adjusted.append(y)
            future_season.append(None)
    total = np.zeros((len(series), horizon))
    counts = np.zeros(len(series))
    for k in LEVELS:
        levels = {i: aggregate(a, k) for i, a in enumerate(adjusted)}
        rows = {i: blocks for i, blocks in levels.items() if blocks is not None}
        if not rows:
            continue
        steps = math.ceil(horizon / k)
        batch = torch.from_numpy(_left_padded(list(rows.values())))
        point = model.forecast(batch, steps).point.double().numpy()  # (R, ceil(H / k))
        for row, index in enumerate(rows):
            total[index] += np.repeat(point[row], k)[:horizon]
            counts[index] += 1
    out = total / np.maximum(counts, 1)[:, None]
    out[counts == 0] = np.nan
    for index, season in enumerate(future_season):
        if season is not None:
            later, multiplicative = season
            out[index] = out[index] * later if multiplicative else out[index] + later
    return out


def cached_aggregation(
    name: str, split: str, data: BenchSeries, store: Path
) -> dict[str, np.ndarray]:
    """``ta_ets``, ``ta_theta`` and (for the pair table) ``seasonal_naive`` point forecasts
    ``(S, H)``, computed once per store."""
    context = make_windows(data, DATASETS[name].input_length, 0).context.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for variant, base in [*BASE_MODELS.items(), ("seasonal_naive", "seasonal_naive")]:
        path = store / "temporal_aggregation" / f"{name}_{split}_{variant}.npy"
        if not path.exists():
            started = time.perf_counter()
            if variant == "seasonal_naive":
                model = build_expert(base, ExpertConfig(season_length=SEASON))
                point = model.forecast(torch.from_numpy(context), data.horizon).point.numpy()
            else:
                model = build_expert(base, ExpertConfig(season_length=1))
                point = temporal_aggregation(context, data.horizon, model)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, point)
            print(f"  {name} {split} {variant}: {time.perf_counter() - started:.0f} s", flush=True)
        out[variant] = np.load(path)
    out["ta_both"] = (out["ta_ets"] + out["ta_theta"]) / 2
    return out


def pair_in_hindsight(
    pool: dict[str, np.ndarray], data: BenchSeries, context: np.ndarray
) -> tuple[np.ndarray, str]:
    """The router's best constant pair (``moe.constant_pair``) chosen on these very windows:
    its point forecast ``(S, H)`` and label. ``pool`` maps names to ``(S, H)`` forecasts."""
    names = list(pool)
    points = np.stack([pool[name] for name in names], axis=1)  # (S, E, H)
    pair = best_constant_pair(points, data.test, context, SEASON)
    mixed = pair.weight * points[:, pair.first] + (1 - pair.weight) * points[:, pair.second]
    return mixed, pair.label(names)


def score(name: str, split: str, data: BenchSeries, forecasts: dict[str, np.ndarray]) -> None:
    scale = np.array([naive_scale(values[None, :], SEASON)[0] for values in data.train])

    def mase(forecast: np.ndarray) -> np.ndarray:
        return _mase(forecast, data.test, scale)

    statistical = [forecasts[key] for key in ("autoets", "autotheta", "autoces")]
    fracast = forecasts["all"]
    autoets = mase(forecasts["autoets"])
    aeat_key = min(("autoets", "autotheta"), key=lambda key: np.nanmean(mase(forecasts[key])))
    aeat = mase(forecasts[aeat_key])
    ensemble = mase(np.mean(statistical, axis=0))
    with_fracast = mase(np.mean([*statistical, fracast], axis=0))
    print(f"\n{DATASETS[name].description}, {split} split ({len(data.ids)} series)")
    print(
        f"stat_ensemble mean(AE,AT,CES) {np.nanmean(ensemble):.4f}; with fracast "
        f"{np.nanmean(with_fracast):.4f}; AutoETS {np.nanmean(autoets):.4f}; "
        f"better of AutoETS/AutoTheta ({aeat_key}) {np.nanmean(aeat):.4f}"
    )
    print(
        f"{'variant':9s} {'alone':>7s} {'vs AutoETS':>14s} {'vs AE/AT':>14s} "
        f"{'+ensemble':>9s} {'vs ensemble':>14s} {'+ens+fracast':>12s} {'vs ens+fracast':>14s}"
    )
    for variant in VARIANTS:
        alone = mase(forecasts[variant])
        four = mase(np.mean([*statistical, forecasts[variant]], axis=0))
        five = mase(np.mean([*statistical, forecasts[variant], fracast], axis=0))
        print(
            f"{variant:9s} {np.nanmean(alone):7.4f} {_versus(alone, autoets):>14s} "
            f"{_versus(alone, aeat):>14s} {np.nanmean(four):9.4f} {_versus(four, ensemble):>14s} "
            f"{np.nanmean(five):12.4f} {_versus(five, with_fracast):>14s}"
        )
    # The most a top-2 router could make of a variant as a fifth expert of the default pool:
    # the best constant pair chosen on these very windows (in hindsight, so optimistic).
    pool = {key: forecasts[key] for key in ("seasonal_naive", "autotheta")}
    pool.update(fracast=fracast, stat_ensemble=np.mean(statistical, axis=0))
    context = make_windows(data, DATASETS[name].input_length, 0).context.astype(np.float64)
    default, label = pair_in_hindsight(pool, data, context)
    print(f"best constant pair in hindsight, default pool: {np.nanmean(mase(default)):.4f} {label}")
    for variant in VARIANTS:
        mixed, label = pair_in_hindsight({**pool, variant: forecasts[variant]}, data, context)
        print(
            f"  + {variant:9s} {np.nanmean(mase(mixed)):.4f} "
            f"{_versus(mase(mixed), mase(default)):>14s} {label}"
        )
    # How alike the errors are: correlation over series of per-series MASE.
    members = {"AE": "autoets", "AT": "autotheta", "CES": "autoces", "fracast": "all"}
    errors = {short: mase(forecasts[key]) for short, key in members.items()}
    errors.update({variant: mase(forecasts[variant]) for variant in VARIANTS})
    finite = np.all([np.isfinite(values) for values in errors.values()], axis=0)
    print("correlation of per-series MASE with " + ", ".join(members))
    for row in ("AE", "AT", *VARIANTS):
        cells = [np.corrcoef(errors[row][finite], errors[short][finite])[0, 1] for short in members]
        print(f"{row:9s} " + " ".join(f"{cell:6.2f}" for cell in cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/work/bench_store"))
    parser.add_argument("--datasets", default="m3,tourism,m1", help="comma list")
    parser.add_argument("--split", choices=("development", "official"), default="development")
    args = parser.parse_args(argv)
    for name in args.datasets.split(","):
        data = _split(name, args.split)
        forecasts = cached_forecasts(name, args.split, data, args.store, {"all"})
        forecasts.update(cached_aggregation(name, args.split, data, args.store))
        score(name, args.split, data, forecasts)


if __name__ == "__main__":
    main()
