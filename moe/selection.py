"""The one validated gate fit: candidates, a small grid, a time budget, a one-SE rule.

``fit_gate`` is what ``moe retrain`` (``pipeline.retrain.train_and_backtest``), the seed's
``train_and_save`` and ``benchmarks/bench_accuracy.py`` all call, so the production fit is
the benchmarked fit.

Protocol. The caller marks one validation window per series (its newest training
window; a temporal split). Every candidate trains on the other windows with a loss in MASE
units and is scored on the validation windows, per window, in MASE units. With ``folds``
> 1 (opt-in; the callers pass ``VALIDATION_FOLDS``) each series' next-older windows are
held out in turn too, and a candidate's score per series is its mean over them:

1. ``pair``: the constant router to the expert pair and weight (``moe.constant_pair``)
   best on the training windows (simplest); when it is chosen, the pair and weight are
   chosen again on every window (nothing else about it could have been tuned on
   validation);
2. ``linear``: the seed's linear gate started at the equally weighted pair best on the
   training windows and at every other pair, best epoch kept;
3. ``feature_pair``: the feature-pair gate (``moe.feature_gate``), equal or learned
   weights, with or without each expert's past MASE on the same series (``history``);
   opt-in ``feature_pair+forecasts`` also routes on the experts' forecasts (dense);
4. ``contextual``: attention over all experts' forecasts (dense at inference; most complex).

The candidate with the lowest mean validation error is the reference; the **simplest**
candidate whose paired mean difference to it is within one standard error of that
difference is chosen (the one-standard-error rule: with dozens of candidates and a few
hundred validation windows the lowest mean alone overfits validation). Candidates are
tried in order of complexity and the grid stops adding candidates once ``time_budget_s``
is spent (``pair`` is always tried). The chosen gate is returned as validated (trained on
the non-validation windows): a refit on every window with the chosen epochs is a
different gate, and refits drifted (docs/ACCURACY.md). The constant pair is the exception
(see 1).

Shapes: ``context`` ``(N, L)`` raw, NaN = missing; ``target`` ``(N, H)``; ``points``
``(N, E, H)``; ``validation_mask``, ``series_index``, ``origin`` ``(N,)``; ``season_length``
an int or ``(N,)`` per-window seasons.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from moe.constant_pair import best_constant_pair, constant_pair_gate
from moe.data import window_ranks
from moe.feature_gate import FeaturePairGate, past_expert_mase
from moe.router import mix, select_top2
from moe.scaling import mase_scales, scale_context, scale_forecasts, window_scale
from moe.training import TrainConfig, TrainResult, train_gate

__all__ = [
    "DEFAULT_KINDS",
    "PAIR_MEMBERS",
    "VALIDATION_FOLDS",
    "COMPLEXITY",
    "CandidateScore",
    "GateFit",
    "candidate_configs",
    "fit_gate",
    "gate_logits",
    "one_standard_error",
]

#: Measured cost of ``moe.features`` per window on one core here (1.6 ms), rounded up.
FEATURE_SECONDS_PER_WINDOW = 2e-3
#: Candidate kinds ``fit_gate`` tries by default, simplest first. The contextual gate is
#: left out by default: it needs every expert at inference (dense) and lost on Tourism.
DEFAULT_KINDS: tuple[str, ...] = ("pair", "linear", "feature_pair")
#: Validation folds over window ranks that ``moe retrain``, the seed's ``train_and_save``
#: and the benchmark pass to ``fit_gate``: 1 = each series' newest training window only.
#: Two folds (its next-older window too) won on the development split and lost on both
#: official holdouts (docs/ACCURACY.md, "Validation on two windows per series").
VALIDATION_FOLDS = 1
#: MLPs in each feature-pair candidate's seed ensemble (``FeaturePairGate.members``).
PAIR_MEMBERS = 1
#: Rank used by the one-SE rule (lower = simpler = preferred when within one SE).
COMPLEXITY = {
    "pair": 0,
    "linear": 1,
    "feature_pair": 2,
    "feature_pair+history": 3,
    "feature_pair+forecasts": 4,  # dense at inference: every expert runs before routing
    "contextual": 5,
}


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's validation result. ``errors`` ``(V,)`` MASE per validation window
    (one fold) or per validated series, averaged over its held-out windows (folds > 1)."""

    name: str
    family: str  # a key of COMPLEXITY
    config: TrainConfig
    errors: torch.Tensor
    seconds: float
    result: TrainResult

    @property
    def mean(self) -> float:
        return float(self.errors.mean())


@dataclass
class GateFit:
    """The chosen gate, every candidate's validation score and why the choice was made."""

    result: TrainResult
    chosen: CandidateScore
    best: CandidateScore
    candidates: list[CandidateScore]
    skipped: list[str] = field(default_factory=list)
    history: torch.Tensor | None = None  # (N, E) past per-expert MASE the gate trained with
    folds: int = 1  # validation folds actually used (window-rank cross-validation)
    n_windows: int | None = None  # validation windows over the folds (None: one per error)

    def summary(self) -> dict[str, Any]:
        """Plain data for the artifact's ``metrics["selection"]``."""
        return {
            "rule": "one standard error (paired, per validation "
            + ("window" if self.folds == 1 else "series, over folds")
            + ", MASE units)",
            "chosen": self.chosen.name,
            "lowest_mean": self.best.name,
            "n_validation": int(self.best.errors.numel()),
            "folds": self.folds,
            "n_validation_windows": self.n_windows or int(self.best.errors.numel()),
            "candidates": [
                {
                    "name": c.name,
                    "family": c.family,
                    "val_mase": c.mean,
                    "diff_vs_lowest": float((c.errors - self.best.errors).mean()),
                    "se_vs_lowest": _paired_se(c.errors, self.best.errors),
                    "seconds": round(c.seconds, 2),
                }
                for c in self.candidates
            ],
            "skipped_for_time": list(self.skipped),
        }

    def table(self) -> str:
        """A fixed-width table of the candidates (validation MASE, paired SE)."""
        lines = [f"{'candidate':<46}{'val MASE':>10}{'vs lowest':>11}{'SE':>8}"]
        for c in self.candidates:
            mark = " <- chosen" if c is self.chosen else ""
            diff = float((c.errors - self.best.errors).mean())
            se = _paired_se(c.errors, self.best.errors)
            lines.append(f"{c.name:<46}{c.mean:>10.4f}{diff:>+11.4f}{se:>8.4f}{mark}")
        return "\n".join(lines)


def _paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    difference = a - b
    if difference.numel() < 2:
        return 0.0
    return float(difference.std() / difference.numel() ** 0.5)


def one_standard_error(
    candidates: Sequence[CandidateScore],
) -> tuple[CandidateScore, CandidateScore]:
    """(chosen, lowest-mean): the simplest candidate within one paired SE of the lowest."""
    best = min(candidates, key=lambda c: c.mean)
    within = [
        c
        for c in candidates
        if float((c.errors - best.errors).mean()) <= _paired_se(c.errors, best.errors)
    ]
    chosen = min(within, key=lambda c: (COMPLEXITY[c.family], c.mean))
    return chosen, best


def candidate_configs(
    kinds: Sequence[str],
    season_length: int,
    seed: int,
    use_history: bool,
    n_experts: int,
    pair_members: int = 1,
    linear_starts: str = "every_pair",
) -> list[tuple[str, str, TrainConfig]]:
    """The grid: ``(name, family, config)`` per candidate, simplest first.

    ``linear_starts``: "every_pair" starts the linear gate at every expert pair and at the
    pair best on the training windows; "best" only at the latter."""
    base = TrainConfig(
        loss_scale="seasonal_naive", season_length=season_length, seed=seed, balance_weight=0.0
    )
    out: list[tuple[str, str, TrainConfig]] = []
    if "pair" in kinds:
        pair = base.model_copy(update={"gate": "linear", "init": "best_pair", "epochs": 0})
        out.append(("pair (best on training windows)", "pair", pair))
    if "linear" in kinds:
        # Every pair start (None: the pair best on the training windows): top-2 selection has
        # no gradient, so the start decides which pair the gate can leave (docs/ACCURACY.md).
        starts: list[tuple[int, int] | None] = [None]
        if linear_starts == "every_pair":
            starts += list(itertools.combinations(range(n_experts), 2))
        elif linear_starts != "best":
            raise ValueError(f"linear_starts must be 'every_pair' or 'best', got {linear_starts!r}")
        for start in starts:
            for lr in (1e-2, 1e-3):
                for delta in (2.0, 0.1):
                    config = base.model_copy(
                        update={
                            "gate": "linear",
                            "init": "best_pair",
                            "start_pair": start,
                            "lr": lr,
                            "huber_delta": delta,
                            "epochs": 30,
                            "batch_size": 64,
                            "keep_best_epoch": True,
                        }
                    )
                    where = "best" if start is None else f"{start[0]}+{start[1]}"
                    name = f"linear start={where} lr={lr:g} delta={delta:g}"
                    out.append((name, "linear", config))
    variants: list[tuple[bool, bool]] = []  # (use_history, use_forecasts)
    if "feature_pair" in kinds:
        variants += [(False, False)] + ([(True, False)] if use_history else [])
    if "feature_pair+forecasts" in kinds:
        variants.append((False, True))
    for history, forecasts in variants:
        for weights in ("equal", "learned"):
            for decay in (1e-3, 1e-1):
                config = base.model_copy(
                    update={
                        "gate": "feature_pair",
                        "lr": 3e-3,
                        "epochs": 60,
                        "batch_size": 128,
                        "keep_best_epoch": True,
                        "pair_weights": weights,
                        "weight_decay": decay,
                        "use_history": history,
                        "use_forecasts": forecasts,
                        "pair_members": pair_members,
                    }
                )
                family = "feature_pair" + ("+history" if history else "")
                family += "+forecasts" if forecasts else ""
                name = f"{family} w={weights} wd={decay:g}"
                name += f" x{pair_members}" if pair_members > 1 else ""
                out.append((name, family, config))
    if "contextual" in kinds:
        for lr in (1e-3, 1e-2):
            config = base.model_copy(
                update={
                    "gate": "contextual",
                    "init": "best_pair",
                    "lr": lr,
                    "epochs": 25,
                    "batch_size": 32,
                    "keep_best_epoch": True,
                }
            )
            out.append((f"contextual lr={lr:g}", "contextual", config))
    return out


def gate_logits(
    result: TrainResult,
    context: torch.Tensor,
    points: torch.Tensor,
    history: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits ``(n, E)`` of a trained gate on raw ``context`` ``(n, L)`` as the router
    computes them (``inputs``: the feature-pair gate's precomputed raw inputs)."""
    gate = result.gate
    with torch.no_grad():
        if isinstance(gate, FeaturePairGate):
            if inputs is None:
                inputs = gate.raw_inputs(context, history, None, points)
            return gate.logits_for(*gate.pair_outputs(inputs))
        scale = window_scale(context.float(), result.config.scaling)
        scaled = scale_context(context.float(), scale)
        forecasts = scale_forecasts(points.float(), scale) if gate.needs_forecasts else None
        return gate(scaled, forecasts)


def _fold_masks(
    validation_mask: torch.Tensor,
    folds: int,
    series_index: np.ndarray | None,
    origin: np.ndarray | None,
) -> list[torch.Tensor]:
    """``folds`` masks ``(N,)``: the given one, then per series with a validation window
    its 1st, 2nd, ... window older than that one (folds that would be empty are dropped)."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    masks = [validation_mask]
    if folds == 1:
        return masks
    if series_index is None or origin is None:
        raise ValueError("folds > 1 needs series_index and origin (N,)")
    series = np.asarray(series_index)
    n_series = int(series.max()) + 1
    validated = validation_mask.numpy()
    rank = window_ranks(series, np.asarray(origin))  # 0 = the series' newest window
    validation_rank = np.full(n_series, -1)
    validation_rank[series[validated]] = rank[validated]
    has_validation = validation_rank >= 0
    for k in range(1, folds):
        fold = has_validation[series] & (rank == validation_rank[series] + k)
        if fold.any() and not fold.all():
            masks.append(torch.from_numpy(fold))
    return masks


def _constant_pair(
    context: torch.Tensor,
    target: torch.Tensor,
    points: torch.Tensor,
    seasons: torch.Tensor,
    rows: torch.Tensor,
    config: TrainConfig,
) -> TrainResult:
    """The pair and weight (``moe.constant_pair.PAIR_WEIGHTS``) with the lowest mean MASE
    on the windows ``rows`` ``(N,)`` marks, as a constant linear gate."""
    picked = rows.numpy()
    pair = best_constant_pair(
        points.numpy()[picked],
        target.numpy()[picked],
        context.numpy()[picked],
        seasons.numpy()[picked],
    )
    gate = constant_pair_gate(context.shape[1], target.shape[1], points.shape[1], pair)
    return TrainResult(
        gate=gate,
        config=config,
        history=[],
        n_train=int(picked.sum()),
        n_val=int((~picked).sum()),
        start_pair=(pair.first, pair.second),
    )


def _group_mean(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``(G,)`` mean of ``values`` ``(V,)`` per group id ``(V,)`` in ``0..G-1``."""
    n_groups = int(group.max()) + 1
    total = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, group, values)
    count = torch.zeros(n_groups, dtype=values.dtype).index_add_(0, group, torch.ones_like(values))
    return total / count


def _window_mase(
    mixed: torch.Tensor, target: torch.Tensor, mase_scale: torch.Tensor
) -> torch.Tensor:
    observed = ~torch.isnan(target)
    errors = ((mixed - target.nan_to_num(0.0)).abs() * observed).sum(1)
    return errors / observed.sum(1).clamp_min(1) / mase_scale


def fit_gate(
    context: torch.Tensor,
    target: torch.Tensor,
    points: torch.Tensor,
    *,
    validation_mask: torch.Tensor,
    season_length: int | torch.Tensor = 12,
    series_index: np.ndarray | None = None,
    origin: np.ndarray | None = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    use_history: bool = False,
    time_budget_s: float = 300.0,
    seed: int = 0,
    pair_members: int = PAIR_MEMBERS,
    linear_starts: str = "every_pair",
    folds: int = 1,
    log: Any = None,
) -> GateFit:
    """Run the validated selection (module docstring) on the training windows given.

    ``use_history`` adds feature-pair candidates that route on each expert's past MASE on
    the same series; it needs ``series_index`` and ``origin`` and is only honest when the
    forecast path can supply the same history at inference. ``log``: a callable taking one
    line of progress (e.g. ``print``), or None.

    ``folds`` > 1 validates on more windows (window-rank cross-validation, needs
    ``series_index`` and ``origin``): fold k holds out each validated series' k-th window
    older than its validation window, every candidate is trained once per fold on the
    windows outside it, and its score per series is the mean over that series' held-out
    windows, so the one-SE rule (paired over series) compares candidates on up to ``folds``
    windows per series instead of one. The gate returned is still fold 0's fit (trained
    without and validated on the windows ``validation_mask`` marks). ``folds`` = 1 is
    the single temporal split.
    """
    started = time.perf_counter()
    context = context.float()
    target = target.float()
    points = points.float()
    mask = validation_mask.to(torch.bool).reshape(-1)
    if mask.shape != (context.shape[0],) or not mask.any() or mask.all():
        raise ValueError(
            "fit_gate needs a validation mask (N,) with some validation and some training "
            f"windows, got {int(mask.sum())} of {mask.numel()} marked"
        )
    seasons = torch.as_tensor(season_length, dtype=torch.int64).reshape(-1)
    seasons = seasons.expand(context.shape[0]) if seasons.numel() == 1 else seasons
    typical_season = int(seasons.mode().values)
    scale = mase_scales(context, seasons)  # (N,)
    history = None
    if use_history:
        if series_index is None or origin is None:
            raise ValueError("use_history needs series_index and origin (N,)")
        history = past_expert_mase(points, target, scale, series_index, origin)
    fold_masks = _fold_masks(mask, folds, series_index, origin)
    group = None  # (V_all,) series group of each validation window over the folds
    if len(fold_masks) > 1:
        assert series_index is not None
        ids = np.concatenate([np.asarray(series_index)[f.numpy()] for f in fold_masks])
        group = torch.from_numpy(np.unique(ids, return_inverse=True)[1].reshape(-1))
    inputs: dict[tuple[bool, bool], torch.Tensor] = {}  # (use_history, use_forecasts) ->
    candidates: list[CandidateScore] = []
    skipped: list[str] = []
    for name, family, config in candidate_configs(
        kinds, typical_season, seed, use_history, points.shape[1], pair_members, linear_starts
    ):
        if candidates and time.perf_counter() - started > time_budget_s:
            skipped.append(name)
            continue
        begun = time.perf_counter()
        extra: dict[str, Any] = {"mase_scale": scale}
        key = (config.use_history, config.use_forecasts)
        if config.gate == "feature_pair":
            if key not in inputs:
                # Features cost ~2 ms per window (NumPy per row): skip the family rather
                # than blow the budget on a very large store.
                needed = FEATURE_SECONDS_PER_WINDOW * context.shape[0]
                if time.perf_counter() - started + needed > time_budget_s:
                    skipped.append(name)
                    continue
                probe = FeaturePairGate(
                    context.shape[1],
                    target.shape[1],
                    points.shape[1],
                    season_length=typical_season,
                    use_history=config.use_history,
                    use_forecasts=config.use_forecasts,
                )
                inputs[key] = probe.raw_inputs(
                    context, history if config.use_history else None, seasons, points
                )
            extra.update(inputs=inputs[key], history=history)
        fold_errors: list[torch.Tensor] = []
        results: list[TrainResult] = []
        for fold in fold_masks:
            rows = fold.nonzero().squeeze(1)
            if family == "pair":
                result = _constant_pair(context, target, points, seasons, ~fold, config)
            else:
                result = train_gate(context, target, points, config, validation_mask=fold, **extra)
            logits = gate_logits(
                result,
                context[rows],
                points[rows],
                None if history is None else history[rows],
                inputs[key][rows] if config.gate == "feature_pair" else None,
            )
            mixed = mix(select_top2(logits), points[rows]).point
            fold_errors.append(_window_mase(mixed, target[rows], scale[rows]))
            results.append(result)
        errors = fold_errors[0] if group is None else _group_mean(torch.cat(fold_errors), group)
        # The gate returned is fold 0's: validated on the windows the caller marked.
        candidate = CandidateScore(
            name, family, config, errors, time.perf_counter() - begun, results[0]
        )
        candidates.append(candidate)
        if log is not None:
            log(f"  candidate {name:<44} val MASE {candidate.mean:.4f} ({candidate.seconds:.1f}s)")
    chosen, best = one_standard_error(candidates)
    result = chosen.result
    if chosen.family == "pair":
        # A constant pair has nothing trained that validation could have tuned, so the pair
        # and weight are chosen again on every window, newest included (as the retrain's
        # promotion fallback chooses its pair: both then route the same).
        everything = torch.ones(context.shape[0], dtype=torch.bool)
        result = _constant_pair(context, target, points, seasons, everything, chosen.config)
    n_windows = sum(int(f.sum()) for f in fold_masks)
    return GateFit(result, chosen, best, candidates, skipped, history, len(fold_masks), n_windows)
