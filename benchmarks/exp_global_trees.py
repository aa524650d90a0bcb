"""Experiment (issue 13): a global gradient-boosted-trees model as a fifth expert, measured.

Not part of the product: a measurement reported in docs/ACCURACY.md ("accuracy16"). The
global expert tried so far is an MLP (``global_mlp``); a tree ensemble on the same kind of
scaled windows is the other common choice for global models (the issue names LightGBM).
scikit-learn's ``HistGradientBoostingRegressor`` (LightGBM's algorithm, already installed
with statsforecast's dependencies) stands in for it, so nothing new is installed.

Training windows come from the development *training* parts only (each series without its
last ``h`` points) of every listed set, pooled: the input is the last ``INPUT`` points
before an origin (NaN before the series starts; at least ``SCALE_POINTS`` observed), divided
by the mean absolute value of its last ``SCALE_POINTS`` points; the target is the next
``h`` points on the same scale; every origin whose whole target lies in the training part is
used. One model per step ahead (direct strategy), absolute-error loss. The forecast starts
at the end of each training part and is scored on the development targets, alone and with
the experts of ``exp_temporal_aggregation.py`` (whose caches it shares)::

    python benchmarks/exp_global_trees.py --store /work/bench_store --datasets m3,tourism,m1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from benchmarks._accuracy_data import DATASETS, BenchSeries, make_windows  # noqa: E402
from benchmarks.exp_fracast_tta import _mase, _split, _versus, cached_forecasts  # noqa: E402
from benchmarks.exp_temporal_aggregation import cached_aggregation, pair_in_hindsight  # noqa: E402
from moe.metrics import naive_scale  # noqa: E402

INPUT = 36  # points the trees see
SCALE_POINTS = 12  # the newest points that set a window's scale
SEASON = 12
TREE_PARAMS = {
    "loss": "absolute_error",
    "max_iter": 200,
    "learning_rate": 0.05,
    "max_leaf_nodes": 31,
    "early_stopping": False,
    "random_state": 0,
}


@dataclass(frozen=True)
class Recipe:
    """How the trees see a window (accuracy18): ``inputs`` points, and whether targets are
    taken relative to the seasonal naive forecast (``seasonal``: the trees predict
    ``(y[t+k] - x[t+k-12*ceil(k/12)]) / level`` and the forecast adds the reference back)."""

    inputs: int = INPUT
    seasonal: bool = False


RECIPES = {"base": Recipe(), "long": Recipe(inputs=60), "seasonal": Recipe(seasonal=True)}


def window_scale(inputs: np.ndarray) -> np.ndarray:
    """``(N,)`` mean absolute value of each row's last ``SCALE_POINTS`` points.

    ``inputs`` ``(N, INPUT)``, NaN where a series has not started."""
    return np.nanmean(np.abs(inputs[:, -SCALE_POINTS:]), axis=1)


def seasonal_reference(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """``(N, horizon)`` the seasonal naive forecast of each row of ``inputs`` ``(N, I)``:
    step k repeats the point one season (``SEASON``) before it; a missing one (a series
    with less than a season) is replaced by the row's last point."""
    reference = inputs[:, -SEASON:][:, np.arange(horizon) % SEASON]
    return np.where(np.isnan(reference), inputs[:, -1:], reference)


def last_inputs(values: np.ndarray, inputs: int = INPUT) -> np.ndarray:
    """The last ``inputs`` points of a 1-D series ``(inputs,)``, NaN-padded on the left."""
    padded = np.concatenate([np.full(inputs, np.nan), values])
    return padded[-inputs:]


def training_windows(
    train: list[np.ndarray], horizon: int, recipe: Recipe = Recipe()
) -> tuple[np.ndarray, np.ndarray]:
    """Every window of every series: inputs ``(N, recipe.inputs)`` and targets
    ``(N, horizon)`` (minus the seasonal reference under ``recipe.seasonal``), both divided
    by the window's scale; windows whose scale is not positive are dropped."""
    size = recipe.inputs
    inputs, targets = [], []
    for values in train:
        padded = np.concatenate([np.full(size, np.nan), values])
        for origin in range(SCALE_POINTS, values.size - horizon + 1):
            inputs.append(padded[origin : origin + size])  # values[origin - size : origin]
            targets.append(values[origin : origin + horizon])
    if not inputs:
        return np.empty((0, size)), np.empty((0, horizon))
    x, y = np.array(inputs), np.array(targets)
    if recipe.seasonal:
        y = y - seasonal_reference(x, horizon)
    scale = window_scale(x)
    keep = scale > 0
    return x[keep] / scale[keep, None], y[keep] / scale[keep, None]


def fit_and_forecast(
    sets: dict[str, BenchSeries], max_horizon: int, recipe: Recipe = Recipe()
) -> dict[str, np.ndarray]:
    """One model per step on the pooled windows; each set's forecast ``(S, h)``."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    pooled = {
        name: training_windows(data.train, data.horizon, recipe) for name, data in sets.items()
    }
    starts = {
        name: np.array([last_inputs(v, recipe.inputs) for v in data.train])
        for name, data in sets.items()
    }
    scales = {name: window_scale(rows) for name, rows in starts.items()}
    out = {name: np.full((len(data.ids), data.horizon), np.nan) for name, data in sets.items()}
    for step in range(max_horizon):
        parts = [(x, y[:, step]) for x, y in pooled.values() if y.shape[1] > step]
        x = np.concatenate([part[0] for part in parts])
        y = np.concatenate([part[1] for part in parts])
        model = HistGradientBoostingRegressor(**TREE_PARAMS).fit(x, y)
        for name, data in sets.items():
            if step < data.horizon:
                ok = scales[name] > 0
                rows = starts[name][ok] / scales[name][ok, None]
                out[name][ok, step] = model.predict(rows) * scales[name][ok]
    for name, data in sets.items():
        if recipe.seasonal:  # the trees gave each step's departure from the reference
            out[name] += seasonal_reference(starts[name], data.horizon)
        flat = ~(scales[name] > 0)  # a series whose scale is 0 gets its last value
        out[name][flat] = np.array([v[-1] for v in data.train])[flat, None]
    return out


def cached_trees(
    names: list[str], split: str, store: Path, recipe: str = "base"
) -> dict[str, np.ndarray]:
    """The trees' forecasts per set ``(S, h)``, trained once on the pooled ``names``."""
    pool = "+".join(names)
    suffix = "" if recipe == "base" else f"_{recipe}"
    paths = {name: store / "global_trees" / f"{pool}_{split}_{name}{suffix}.npy" for name in names}
    if not all(path.exists() for path in paths.values()):
        started = time.perf_counter()
        sets = {name: _split(name, split) for name in names}
        forecasts = fit_and_forecast(
            sets, max(data.horizon for data in sets.values()), RECIPES[recipe]
        )
        for name, path in paths.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, forecasts[name])
        print(
            f"  trees ({recipe}) on {pool} {split}: {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return {name: np.load(path) for name, path in paths.items()}


def score(name: str, split: str, data: BenchSeries, forecasts: dict[str, np.ndarray]) -> None:
    scale = np.array([naive_scale(values[None, :], SEASON)[0] for values in data.train])

    def mase(forecast: np.ndarray) -> np.ndarray:
        return _mase(forecast, data.test, scale)

    statistical = [forecasts[key] for key in ("autoets", "autotheta", "autoces")]
    fracast, trees = forecasts["all"], forecasts["trees"]
    aeat_key = min(("autoets", "autotheta"), key=lambda key: np.nanmean(mase(forecasts[key])))
    four = mase(np.mean([*statistical, fracast], axis=0))
    five = mase(np.mean([*statistical, fracast, trees], axis=0))
    print(f"\n{DATASETS[name].description}, {split} split ({len(data.ids)} series)")
    print(
        f"trees alone {np.nanmean(mase(trees)):.4f}, vs {aeat_key} "
        f"{_versus(mase(trees), mase(forecasts[aeat_key]))}, vs fracast "
        f"{_versus(mase(trees), mase(fracast))}"
    )
    print(
        f"mean(AE,AT,CES,fracast) {np.nanmean(four):.4f}; with trees {np.nanmean(five):.4f} "
        f"{_versus(five, four)}"
    )
    pool = {key: forecasts[key] for key in ("seasonal_naive", "autotheta")}
    pool.update(fracast=fracast, stat_ensemble=np.mean(statistical, axis=0))
    context = make_windows(data, DATASETS[name].input_length, 0).context.astype(np.float64)
    default, label = pair_in_hindsight(pool, data, context)
    mixed, with_label = pair_in_hindsight({**pool, "trees": trees}, data, context)
    print(
        f"best constant pair in hindsight: default pool {np.nanmean(mase(default)):.4f} "
        f"{label}; + trees {np.nanmean(mase(mixed)):.4f} {_versus(mase(mixed), mase(default))} "
        f"{with_label}"
    )
    ensemble = mase(pool["stat_ensemble"])
    combinations = {  # accuracy17: the trees inside a combination expert
        "combo5 mean(AE,AT,CES,fracast,trees)": np.mean([*statistical, fracast, trees], axis=0),
        "combo4 mean(AE,AT,CES,trees)": np.mean([*statistical, trees], axis=0),
    }
    for combo_label, combo in combinations.items():
        paired, paired_label = pair_in_hindsight({**pool, "combo": combo}, data, context)
        print(
            f"{combo_label} {np.nanmean(mase(combo)):.4f} vs stat_ensemble "
            f"{_versus(mase(combo), ensemble)}; best constant pair with it "
            f"{np.nanmean(mase(paired)):.4f} {_versus(mase(paired), mase(default))} "
            f"{paired_label}"
        )
    members = {"AE": "autoets", "AT": "autotheta", "CES": "autoces", "fracast": "all"}
    errors = [mase(forecasts[key]) for key in members.values()]
    mine = mase(trees)
    finite = np.isfinite(mine) & np.all([np.isfinite(e) for e in errors], axis=0)
    cells = [np.corrcoef(mine[finite], e[finite])[0, 1] for e in errors]
    print(
        "correlation of per-series MASE with "
        + ", ".join(f"{short} {cell:.2f}" for short, cell in zip(members, cells, strict=True))
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/work/bench_store"))
    parser.add_argument("--datasets", default="m3,tourism,m1", help="comma list, pooled")
    parser.add_argument("--split", choices=("development", "official"), default="development")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="base")
    args = parser.parse_args(argv)
    names = args.datasets.split(",")
    trees = cached_trees(names, args.split, args.store, args.recipe)
    base = cached_trees(names, args.split, args.store) if args.recipe != "base" else trees
    for name in names:
        data = _split(name, args.split)
        forecasts = cached_forecasts(name, args.split, data, args.store, {"all"})
        forecasts.update(cached_aggregation(name, args.split, data, args.store))
        forecasts["trees"] = trees[name]
        score(name, args.split, data, forecasts)
        if args.recipe != "base":
            scale = np.array([naive_scale(values[None, :], SEASON)[0] for values in data.train])
            mine, theirs = (_mase(f[name], data.test, scale) for f in (trees, base))
            print(
                f"trees ({args.recipe}) {np.nanmean(mine):.4f} vs trees (base) "
                f"{np.nanmean(theirs):.4f}: {_versus(mine, theirs)}"
            )


if __name__ == "__main__":
    main()
