"""Experiment (issue 13): test-time ensembles of fracast, measured, not adopted.

Not part of the product: a measurement reported in docs/ACCURACY.md ("accuracy14").
fracast is the only trained, non-statistical expert of the default pool, and it is
scale-free (each row is min-max normalised), so the same network can be asked several
questions about one series and its answers averaged. Passes (each one fracast run per row):

* ``all``, ``96``, ``72``, ``48``: the context trimmed to its last that many points
  (``all``: the whole L-point window); the rest masked as missing;
* ``..._flip``: the same on the series upside down (``-x``), negated back;
* ``log``: rows whose observed values are all > 0 are forecast as ``exp(fracast(log x))``
  (quantiles are equivariant under a monotone map, so intervals would carry over); other
  rows raw.

Variants average the passes' median forecasts. Each is scored alone and inside the
four-model mean with AutoETS, AutoTheta and AutoCES (the combination the default pool's
best pair ``stat_ensemble`` + ``fracast`` reaches). One window per series: the context is
the last L points of the training part, the target the next ``h``; ``--split development``
(the default) holds out the last ``h`` points of the training part instead of the official
holdout. MASE with the whole training part's seasonal-naive scale (lag 12), averaged over
series; "±" is the standard error of the paired per-series difference to plain fracast (or
to the four-model mean with plain fracast). Passes are cached under ``--store``::

    python benchmarks/exp_fracast_tta.py --store /work/bench_store --datasets m3,tourism,m1 \\
        [--variants ctx4,flip,log] [--split official]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from benchmarks._accuracy_data import (  # noqa: E402
    DATASETS,
    BenchSeries,
    development_split,
    load_series,
    make_windows,
)
from moe.experts.base import Expert, ExpertConfig  # noqa: E402
from moe.experts.registry import build_expert  # noqa: E402
from moe.metrics import naive_scale  # noqa: E402

TRIMS = ("all", "96", "72", "48")  # pass names: the whole window, then its last n points
STATISTICAL = ("autoets", "autotheta", "autoces")
SEASON = 12

#: variant -> the passes it averages (pass names as cached).
VARIANTS: dict[str, tuple[str, ...]] = {
    "fracast": ("all",),
    "ctx2": ("all", "72"),
    "ctx4": TRIMS,
    "flip": ("all", "all_flip"),
    "ctx4xflip": tuple(f"{trim}{flip}" for trim in TRIMS for flip in ("", "_flip")),
    "log": ("log",),
    "log+raw": ("log", "all"),
}


def _split(name: str, split: str) -> BenchSeries:
    data = load_series(name)
    return development_split(data) if split == "development" else data


def _pass_input(context: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """The rows fracast sees for pass ``name`` and the sign to undo: ``(S, L)``, +-1."""
    sign = -1.0 if name.endswith("_flip") else 1.0
    trim = name.removesuffix("_flip")
    rows = context.copy()
    if trim != "all":
        rows[:, : context.shape[1] - int(trim)] = np.nan
    return sign * rows, sign


def _run(expert: Expert, rows: np.ndarray, horizon: int) -> np.ndarray:
    return expert.forecast(torch.from_numpy(rows).float(), horizon).point.numpy()  # (S, H)


def _log_pass(fracast: Expert, context: np.ndarray, horizon: int) -> np.ndarray:
    positive = np.all(np.isnan(context) | (context > 0), axis=1)  # (S,)
    logged = np.log(np.where(positive[:, None] & (context > 0), context, 1.0))
    logged[np.isnan(context)] = np.nan
    out = _run(fracast, context, horizon)
    out[positive] = np.exp(_run(fracast, logged[positive], horizon))
    return out


def cached_forecasts(
    name: str, split: str, data: BenchSeries, store: Path, passes: set[str]
) -> dict[str, np.ndarray]:
    """Point forecasts ``(S, H)`` of every pass and statistical model, computed once."""
    # each series' test window: its last L training points, NaN-padded on the left (S, L)
    context = make_windows(data, DATASETS[name].input_length, 0).context.astype(np.float64)
    config = ExpertConfig(season_length=SEASON)
    fracast: Expert | None = None
    out: dict[str, np.ndarray] = {}
    for key in sorted(passes) + list(STATISTICAL):
        path = store / "fracast_tta" / f"{name}_{split}_{key}.npy"
        if path.exists():
            out[key] = np.load(path)
            continue
        started = time.perf_counter()
        if key in STATISTICAL:
            out[key] = _run(build_expert(key, config), context, data.horizon)
        else:
            fracast = fracast or build_expert("fracast", config)
            if key == "log":
                out[key] = _log_pass(fracast, context, data.horizon)
            else:
                rows, sign = _pass_input(context, key)
                out[key] = sign * _run(fracast, rows, data.horizon)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out[key])
        print(f"  {name} {split} {key}: {time.perf_counter() - started:.0f} s", flush=True)
    return out


def _mase(forecast: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per-series MASE ``(S,)``; NaN where the scale is not positive."""
    errors = np.mean(np.abs(forecast - target), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, errors / scale, np.nan)


def _versus(values: np.ndarray, reference: np.ndarray) -> str:
    keep = np.isfinite(values) & np.isfinite(reference)
    diff = values[keep] - reference[keep]
    base = reference[keep].mean()
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    return f"{100 * diff.mean() / base:+5.1f}% ± {100 * se / base:.1f}"


def score(
    name: str, split: str, data: BenchSeries, forecasts: dict[str, np.ndarray], variants: list[str]
) -> None:
    # each series' whole training part sets its scale (lag 1 where it is one season or less)
    scale = np.array([naive_scale(values[None, :], SEASON)[0] for values in data.train])

    def mase(forecast: np.ndarray) -> np.ndarray:
        return _mase(forecast, data.test, scale)

    statistical = [forecasts[key] for key in STATISTICAL]
    plain = mase(forecasts["all"])
    plain_mean = mase(np.mean([*statistical, forecasts["all"]], axis=0))
    aeat = min(np.nanmean(mase(forecasts[key])) for key in ("autoets", "autotheta"))
    print(f"\n{DATASETS[name].description}, {split} split ({len(data.ids)} series)")
    print(
        f"{'variant':10s} {'passes':>6s} {'alone':>8s} {'vs fracast':>16s} "
        f"{'mean(AE,AT,CES,v)':>18s} {'vs with fracast':>16s}"
    )
    for variant in variants:
        passes = VARIANTS[variant]
        point = np.mean([forecasts[key] for key in passes], axis=0)
        alone = mase(point)
        mixed = mase(np.mean([*statistical, point], axis=0))
        print(
            f"{variant:10s} {len(passes):6d} {np.nanmean(alone):8.4f} {_versus(alone, plain):>16s} "
            f"{np.nanmean(mixed):18.4f} {_versus(mixed, plain_mean):>16s}"
        )
    ensemble = np.nanmean(mase(np.mean(statistical, axis=0)))
    print(f"stat_ensemble mean(AE,AT,CES) {ensemble:.4f}; better of AutoETS/AutoTheta {aeat:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("/work/bench_store"))
    parser.add_argument("--datasets", default="m3,tourism,m1", help="comma list")
    parser.add_argument("--split", choices=("development", "official"), default="development")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}"
    )
    args = parser.parse_args(argv)
    variants = ["fracast", *(v for v in args.variants.split(",") if v != "fracast")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; expected some of {', '.join(VARIANTS)}")
    passes = {key for variant in variants for key in VARIANTS[variant]}
    for name in args.datasets.split(","):
        data = _split(name, args.split)
        forecasts = cached_forecasts(name, args.split, data, args.store, passes)
        score(name, args.split, data, forecasts, variants)


if __name__ == "__main__":
    main()
