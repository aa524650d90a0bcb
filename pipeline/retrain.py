"""The retrain job: its outline (``retrain``) and its fit, backtest and promotion steps.

The data steps (windows, trained experts, expert cache) are in ``pipeline.training_data``.
Each step is a plain function; ``retrain`` chains them, and the Prefect flow runs the same
outline with each step as a task (``StepRunner``).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moe.artifact import GateArtifact, save_artifact
from moe.constant_pair import best_constant_pair, constant_pair_gate
from moe.data import Windows, validation_windows
from moe.experts.base import Expert, ExpertConfig, legacy_cache_keys
from moe.intervals import IntervalModel, floor_nonnegative
from moe.metrics import mase
from moe.model_file import build_artifact, load_router
from moe.router import MoERouter
from moe.selection import VALIDATION_FOLDS, fit_gate
from moe.training import TrainResult
from pipeline.backtest import Scores, write_scores
from pipeline.calibration import backtest_with_intervals
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import ForecastRun, batch_forecast
from pipeline.models import load_verified_artifact, registered_router
from pipeline.precompute import PrecomputeStats, load_cached, precompute_cache
from pipeline.promotion import Verdict, judge
from pipeline.training_data import (
    TrainingData,
    add_trained_experts,
    build_experts_for,
    fill_cache,
    load_training_data,
    prepare_windows,
)
from storage.ingest import ingest_jsonl
from storage.registry import champion, get_model, promote, record_event, register_model
from storage.series import StoredSeries
from storage.store import Store

_log = logging.getLogger(__name__)

__all__ = [
    "RetrainResult",
    "ingest_and_window",
    "StepRunner",
    "run_directly",
    "train_and_backtest",
    "register_and_decide",
    "retrain",
    "season_policy",
]


@dataclass
class RetrainResult:
    model_version: str
    promoted: bool
    reason: str
    scores: Scores
    challenger_mase: float
    champion_mase: float | None
    run_id: str
    precompute: list[PrecomputeStats] = field(default_factory=list)
    artifact_path: str = ""
    candidate: str = "gate"  # what was registered: "gate" or "constant_pair"
    forecast: ForecastRun | None = None  # the batch forecast after a promotion, if any


#: Wraps one step of the outline before it is called (identity here; Prefect's ``task`` in
#: the flow). Steps are plain functions of this module (and ``ingest_jsonl``,
#: ``batch_forecast``).
StepRunner = Callable[[Callable[..., Any]], Callable[..., Any]]


def run_directly(step: Callable[..., Any]) -> Callable[..., Any]:
    """The ``StepRunner`` without an orchestrator: the step itself."""
    return step


def mixture_on_cache(
    router: MoERouter, context: np.ndarray, points: torch.Tensor, quantiles: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """The router's top-2 mixture replayed on cached forecasts; ``(N, H)``, ``(N, H, Q)``."""
    output = router.route_cached(torch.from_numpy(context), points, quantiles)
    assert output.quantiles is not None
    return output.point.numpy(), output.quantiles.numpy()


def train_and_backtest(
    experts: list[Expert], data: TrainingData, config: RetrainConfig
) -> tuple[GateArtifact, Scores]:
    """Train the gate on the non-holdout windows, score everything on the holdout ones."""
    train = ~data.windows.is_holdout
    context = torch.from_numpy(data.windows.context)
    target = torch.from_numpy(data.windows.target)
    windows = data.windows
    validation = validation_windows(
        windows.series_index[train], windows.origin[train], seed=config.train.seed
    )
    # The production fit is the benchmarked fit (moe.selection.fit_gate); config.train
    # still gives the seed. The MASE-unit loss takes each training window's own period.
    fit = fit_gate(
        context[train],
        target[train],
        data.points[train].contiguous(),
        validation_mask=torch.from_numpy(validation),
        season_length=torch.from_numpy(_seasons(data)[train]),
        series_index=windows.series_index[train],
        origin=windows.origin[train],
        folds=VALIDATION_FOLDS,
        seed=config.train.seed,
    )
    result = fit.result
    expert_config = ExpertConfig(
        batch_size=config.expert_batch_size, season_length=config.season_length or 1
    )
    artifact = build_artifact(
        result, experts, context[train], target[train], data.points[train], expert_config
    )
    artifact = _packaged(artifact, config)
    artifact.metrics["selection"] = fit.summary()
    router = load_router(artifact, "cpu", experts=experts)
    scores, intervals = _backtest(router, experts, data, config)
    artifact = replace(artifact, intervals=intervals.to_plain())
    artifact.metrics["backtest"] = scores.overall()
    return artifact, scores


def _packaged(artifact: GateArtifact, config: RetrainConfig) -> GateArtifact:
    """The artifact with its checkpoints, season policy and how its windows were cut."""
    artifact = replace(artifact, season=season_policy(config))
    artifact.train_config["windows"] = window_record(config)
    return artifact


def window_record(config: RetrainConfig) -> dict[str, object]:
    """How the retrain cut its windows, in ``moe.training.WindowConfig``'s keys: the seed's
    ``predict_from_model`` reads ``min_context`` to forecast series shorter than L."""
    return {
        "windowing": "rolling",
        "stride": config.stride,
        "max_windows_per_series": config.max_windows_per_series,
        "min_context": config.shortest_window_context,
    }


def season_policy(config: RetrainConfig) -> dict[str, object]:
    """How the forecast job picks each series' season (stored in the artifact)."""
    return {"mode": "per_series", "forced": config.season_length}


def _seasons(data: TrainingData) -> np.ndarray:
    """``(N,)`` each window's period; windows built without one count as non-seasonal."""
    seasons = data.windows.season_length
    return np.ones(len(data.windows), np.int64) if seasons is None else seasons


def _commonest(seasons: np.ndarray) -> int:
    values, counts = np.unique(seasons, return_counts=True)
    return int(values[np.argmax(counts)]) if values.size else 1


def _backtest(
    router: MoERouter, experts: list[Expert], data: TrainingData, config: RetrainConfig
) -> tuple[Scores, IntervalModel]:
    """Experts and ``router``'s mixture on the backtest windows, with calibrated intervals
    (``pipeline.calibration``); the interval model goes into the artifact."""
    return backtest_with_intervals(
        router,
        [expert.name for expert in experts],
        data.windows.context,
        data.windows.target,
        data.windows.series_index,
        _seasons(data),
        data.points,
        data.quantiles,
        data.windows.is_holdout,
        paired=config.interval_calibration == "paired",
        calibrate_on=config.interval_calibration_windows,
    )


def _champion_mase(
    store: Store, data: TrainingData, config: RetrainConfig, loaded: list[Expert]
) -> tuple[str, float] | None:
    """The current champion's mixture MASE on this retrain's backtest windows.

    Experts already ``loaded`` for the challenger are reused when the champion's experts are
    the same models (same cache keys); others are built from the champion's artifact.
    """
    current = champion(store)
    if current is None:
        return None
    artifact = load_verified_artifact(store, current)
    if artifact.pred_length != config.pred_length or artifact.input_length > config.input_length:
        return current.model_version, float("inf")  # cannot forecast these windows at all
    by_key = {  # a champion trained under an older key spelling reuses the same model
        key: expert for expert in loaded for key in (expert.cache_key, *legacy_cache_keys(expert))
    }
    reusable = [by_key.get(str(entry.get("cache_key"))) for entry in artifact.experts]
    reuse = None if None in reusable else [e for e in reusable if e is not None]
    router = registered_router(store, artifact, config.device, experts=reuse)
    holdout = data.windows.is_holdout
    context = data.windows.context[holdout]
    # A champion with a shorter context (e.g. trained before the default grew) reads the
    # newest points of each window, as the batch forecast would give it; MASE keeps the
    # window's whole context for its scale, as the challenger's does.
    seen = np.ascontiguousarray(context[:, context.shape[1] - artifact.input_length :])
    seasons = _seasons(data)[holdout]
    if not artifact.season:  # an older champion: its experts' one configured season
        seasons = None
    precompute_cache(
        store, router.experts, seen, config.pred_length, progress=False, season_lengths=seasons
    )
    points, quantiles = load_cached(
        store, router.experts, seen, config.pred_length, season_lengths=seasons
    )
    assert quantiles is not None
    mixed, _ = mixture_on_cache(router, seen, points, quantiles)
    mixed = floor_nonnegative(mixed, seen)  # as the batch forecast would give it
    score = mase(data.windows.target[holdout], mixed, context, _seasons(data)[holdout])
    return current.model_version, float(np.nanmean(score))


def _constant_pair_candidate(
    experts: list[Expert], data: TrainingData, config: RetrainConfig
) -> tuple[GateArtifact, Scores, str]:
    """The best constant pair (chosen on the training windows), packaged through the normal
    artifact path, and its backtest scores; returns (artifact, scores, label)."""
    train = ~data.windows.is_holdout
    windows = data.windows
    pair = best_constant_pair(
        data.points[train].numpy(),
        windows.target[train],
        windows.context[train],
        _seasons(data)[train],
    )
    names = [expert.name for expert in experts]
    gate = constant_pair_gate(config.input_length, config.pred_length, len(experts), pair)
    result = TrainResult(
        gate=gate,
        config=config.train.model_copy(update={"season_length": _commonest(_seasons(data))}),
        history=[],
        n_train=int(train.sum()),
        n_val=0,
        start_pair=(pair.first, pair.second),
    )
    context = torch.from_numpy(windows.context[train])
    target = torch.from_numpy(windows.target[train])
    expert_config = ExpertConfig(
        batch_size=config.expert_batch_size, season_length=config.season_length or 1
    )
    artifact = build_artifact(result, experts, context, target, data.points[train], expert_config)
    label = pair.label(names)
    artifact.metrics["constant_pair"] = {
        "experts": [names[pair.first], names[pair.second]],
        "weights": [pair.weight, 1 - pair.weight],
        "train_mase": pair.train_mase,
    }
    artifact = _packaged(artifact, config)
    router = load_router(artifact, "cpu", experts=experts)
    scores, intervals = _backtest(router, experts, data, config)
    artifact = replace(artifact, intervals=intervals.to_plain())
    return artifact, scores, label


def _decide_candidate(
    artifact: GateArtifact,
    scores: Scores,
    data: TrainingData,
    config: RetrainConfig,
    experts: list[Expert],
) -> tuple[GateArtifact, Scores, Verdict]:
    """The learned gate if it beats the best single expert and the constant pair on the
    backtest windows, else the constant pair. The returned scores' ``mixture`` row is the
    chosen model; ``learned_gate`` and ``constant_pair`` rows keep both candidates."""
    overall = scores.overall()
    names = [expert.name for expert in experts]
    single = min(
        ((name, overall[name]["mase"]) for name in names),
        key=lambda item: item[1] if np.isfinite(item[1]) else np.inf,
    )
    pair_artifact, pair_scores, label = _constant_pair_candidate(experts, data, config)
    pair_mase = pair_scores.overall()["mixture"]["mase"]
    verdict = judge(
        overall["mixture"]["mase"], single, (label, pair_mase), int(data.windows.is_holdout.sum())
    )
    per_window = dict(scores.per_window)
    per_window["learned_gate"] = scores.per_window["mixture"]
    per_window["constant_pair"] = pair_scores.per_window["mixture"]
    chosen = artifact if verdict.use_gate else pair_artifact
    if not verdict.use_gate:
        for name in ("mixture", "mixture_uncalibrated"):
            per_window[name] = pair_scores.per_window[name]
    merged = Scores(per_window=per_window, series_index=scores.series_index)
    chosen.metrics["backtest"] = merged.overall()
    chosen.metrics["promotion"] = verdict.details
    return chosen, merged, verdict


def register_and_decide(
    store: Store,
    artifact: GateArtifact,
    scores: Scores,
    data: TrainingData,
    config: RetrainConfig,
    run_id: str,
    experts: list[Expert],
) -> RetrainResult:
    """Register the candidate and promote it when it is safe.

    The candidate is the learned gate when its backtest MASE beats both the best single
    expert and the best constant pair on the same windows, else the constant pair
    (``pipeline.promotion``). It becomes champion when there is none yet, or when it beats
    the champion by ``promotion_margin``. The reason names every comparison.
    """
    artifact, scores, verdict = _decide_candidate(artifact, scores, data, config, experts)
    challenger_mase = scores.overall()["mixture"]["mase"]
    with tempfile.TemporaryDirectory() as folder:
        path = save_artifact(artifact, Path(folder) / "model.pt")
        version = register_model(
            store,
            path,
            gate_kind=str(artifact.gate["kind"]),
            expert_keys=artifact.expert_keys,
            input_length=artifact.input_length,
            pred_length=artifact.pred_length,
            train_windows=int(artifact.metrics.get("n_train", 0)),
            backtest_mase=challenger_mase,
            metrics=artifact.metrics,
        )
    write_scores(store, scores, data.series.series_id, run_id, version)
    incumbent = _champion_mase(store, data, config, experts)
    if incumbent is None:
        promoted = True
        reason = f"{verdict.reason}; first model (backtest MASE {challenger_mase:.4f})"
    else:
        threshold = incumbent[1] * (1.0 - config.promotion_margin)
        promoted = challenger_mase <= threshold
        reason = (
            f"{verdict.reason}; candidate MASE {challenger_mase:.4f} vs champion "
            f"{incumbent[0]} {incumbent[1]:.4f} on the same "
            f"{int(data.windows.is_holdout.sum())} windows (needs <= {threshold:.4f}, margin "
            f"{config.promotion_margin:.0%})"
        )
    if promoted:
        promote(store, version, reason)
    else:
        record_event(store, version, "rejected", reason)
    return RetrainResult(
        model_version=version,
        promoted=promoted,
        reason=reason,
        scores=scores,
        challenger_mase=challenger_mase,
        champion_mase=None if incumbent is None else incumbent[1],
        run_id=run_id,
        artifact_path=get_model(store, version).artifact_path,
        candidate="gate" if verdict.use_gate else "constant_pair",
    )


def retrain(
    store: Store,
    config: RetrainConfig,
    experts: list[Expert] | None = None,
    run: StepRunner = run_directly,
) -> RetrainResult:
    """The retrain outline, written once: ingest -> windows -> (global expert) -> expert
    cache -> gate fit + backtest -> register/promote -> (forecast after a promotion).

    ``run`` wraps each step before it is called: plain calls here, Prefect tasks in the
    flow (``flows.jobs.retrain``), so ``moe retrain``, the flow and the tests run the same
    steps in the same order. ``experts`` replaces the ones named in ``config`` (tests pass
    fakes here).
    """
    series, windows = ingest_and_window(store, config, run)
    out_of_fold: dict[str, np.ndarray] = {}
    if experts is None:
        trained = run(add_trained_experts)(
            store, run(build_experts_for)(config), series, windows, config
        )
        experts, out_of_fold = trained.experts, trained.out_of_fold
    stats = run(fill_cache)(store, experts, windows, config)
    data = run(load_training_data)(store, experts, series, windows, config.pred_length, out_of_fold)
    artifact, scores = run(train_and_backtest)(experts, data, config)
    run_id = uuid.uuid4().hex[:12]
    result: RetrainResult = run(register_and_decide)(
        store, artifact, scores, data, config, run_id, experts
    )
    result.precompute = stats
    if result.promoted and config.forecast_after:
        # the experts just used are already loaded: the forecast reuses them
        result.forecast = run(batch_forecast)(
            store, ForecastConfig(device=config.device, dask=config.dask), experts=experts
        )
    return result


def ingest_and_window(
    store: Store, config: RetrainConfig, run: StepRunner = run_directly
) -> tuple[StoredSeries, Windows]:
    """The outline's first steps, shared with the sharded precompute: ingest each of
    ``config.jsonl_paths``, then cut the windows (``prepare_windows``)."""
    for path in config.jsonl_paths:
        run(ingest_jsonl)(store, path)
    return run(prepare_windows)(store, config)
