"""Gate training: on the expert-forecast cache (fast), or with the experts run live (seed).

Both paths share one loop and the router's mixing math (``moe.router.select_top2`` and
``mix``); they differ only in where a batch's expert forecasts come from: a gather from
the cached ``(N, E, H)`` tensor, or the chosen experts run on the batch as the seed did.
With the same seed they train the same gate, so the cache is a pure speed-up.

Only the gate's parameters are optimised (Adam). Inputs and the loss are scaled per
window (``moe.scaling``). Targets may contain NaN (missing): those points are left out
of the loss. Shapes: ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``points`` ``(N, E, H)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.nn import functional as F

from moe._fast_linear import FastLinearTrainer
from moe.experts.base import Expert
from moe.feature_gate import FeaturePairGate
from moe.gates import ContextualGate, GateKind, LinearGate, build_gate, load_balancing_loss
from moe.router import mix, run_experts, select_top2
from moe.scaling import (
    ScalingMethod,
    scale_context,
    scale_forecasts,
    seasonal_naive_scale,
    window_scale,
)

__all__ = [
    "TrainConfig",
    "EpochMetrics",
    "TrainResult",
    "train_gate",
    "train_gate_live",
    "best_pair",
]


class TrainConfig(BaseModel):
    """Everything that decides a trained gate. Defaults reproduce the seed where it had one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=8, ge=1, description="Windows per optimiser step (seed: 8).")
    epochs: int = Field(
        default=5,
        ge=0,
        description="Passes over the training windows (seed: 5); 0 keeps the initial gate "
        "(with init='best_pair': the best constant pair).",
    )
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate (seed: 1e-3).")
    huber_delta: float = Field(
        default=2.0, gt=0, description="HuberLoss delta, in the loss's units (seed: 2.0)."
    )
    seed: int = Field(default=0, description="Seeds gate init, the validation split and shuffling.")
    gate: GateKind = Field(
        default="linear",
        description="'linear' (seed's nn.Linear, sparse inference), 'contextual' "
        "(attention over the experts' forecasts; all experts run at inference) or "
        "'feature_pair' (an MLP on series features picks a pair; sparse; moe.pair_training).",
    )
    init: Literal["random", "best_pair"] = Field(
        default="random",
        description="'random' (seed: torch's default init) or 'best_pair': start as the "
        "constant router to the equally weighted pair of experts with the lowest error on the "
        "training windows, then learn per-window departures from it.",
    )
    start_pair: tuple[int, int] | None = Field(
        default=None,
        description="With init='best_pair': start at these two expert positions instead of "
        "the pair that is best on the training windows (e.g. a pair chosen on validation).",
    )
    keep_best_epoch: bool = Field(
        default=False,
        description="Return the gate from the epoch (0 = the untrained start) with the lowest "
        "validation MAE instead of the last one (early stopping; needs validation windows).",
    )
    loss_scale: Literal["window", "seasonal_naive"] = Field(
        default="window",
        description="Units of the loss: 'window' (the gate's input scale, see 'scaling') or "
        "'seasonal_naive' (each window's in-context seasonal-naive MAE, so the loss is a "
        "MASE and every series counts as it does in the MASE of a backtest).",
    )
    season_length: int = Field(
        default=1, ge=1, description="Season of the 'seasonal_naive' loss scale (12 = monthly)."
    )
    pair_hidden: int = Field(default=32, ge=1, description="Feature-pair gate: MLP width.")
    pair_weights: Literal["equal", "learned"] = Field(
        default="equal", description="Feature-pair gate: mix the pair equally or learn w."
    )
    use_history: bool = Field(
        default=False,
        description="Feature-pair gate: also route on each expert's past MASE on the same "
        "series (strictly older windows; moe.feature_gate.past_expert_mase).",
    )
    weight_decay: float = Field(
        default=0.0, ge=0, description="Feature-pair gate: AdamW weight decay."
    )
    gate_width: int = Field(default=32, ge=1, description="Contextual gate: token width.")
    gate_heads: int = Field(default=4, ge=1, description="Contextual gate: attention heads.")
    balance_weight: float = Field(
        default=0.01,
        ge=0,
        description="Weight of the load-balancing loss (1.0 at uniform load); 0 disables it.",
    )
    val_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of windows held out for validation when no explicit split is "
        "given (at least one window when there are two or more).",
    )
    scaling: ScalingMethod = Field(
        default="mean_abs",
        description="Per-window scaling of gate input and loss: 'mean_abs' or 'none' (seed).",
    )
    device: str = Field(default="cpu", description="Device the gate trains on.")
    windowing: Literal["seed", "rolling"] = Field(
        default="rolling",
        description="train_and_save only: 'seed' = one window per series (seq[:L] -> next H); "
        "'rolling' = rolling origins from each series' end (moe.data.rolling_windows).",
    )
    stride: int | None = Field(
        default=None, ge=1, description="Rolling windows: step between origins (None: pred_length)."
    )
    max_windows_per_series: int | None = Field(
        default=64, ge=1, description="Rolling windows: keep the newest this many per series."
    )
    expert_batch_size: int = Field(
        default=256, ge=1, description="train_and_save only: rows per expert forward call."
    )

    @model_validator(mode="after")
    def _start_pair_needs_pair_init(self) -> TrainConfig:
        if self.start_pair is not None and self.init != "best_pair":
            raise ValueError(
                f"start_pair={self.start_pair} only applies with init='best_pair', "
                f"got init={self.init!r}"
            )
        return self


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch. Losses and errors are in window-scale units (comparable across series).

    ``train_loss``: Huber loss (without the balance term) of the gate at the end of the
    epoch over all training windows. ``val_usage``: share of validation rows that chose each
    expert (sums to 2.0 over
    experts, since every row chooses two). Validation fields are None without validation.
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    val_mae: float | None
    val_usage: list[float] | None

    def as_dict(self) -> dict[str, float | int | list[float] | None]:
        """Plain data for the artifact."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_mae": self.val_mae,
            "val_usage": self.val_usage,
        }


@dataclass(frozen=True)
class TrainResult:
    """A trained gate (in eval mode, on the CPU) and how it got there.

    ``expert_val_mae``: the scaled MAE of each single expert on the validation windows,
    the baseline the gate's ``val_mae`` should beat. ``initial``: the same metrics for the
    gate before any training (epoch 0), so that "no training" can win a model selection.
    """

    gate: LinearGate | ContextualGate | FeaturePairGate
    config: TrainConfig
    history: list[EpochMetrics]
    n_train: int
    n_val: int
    expert_val_mae: list[float] | None = field(default=None)
    initial: EpochMetrics | None = field(default=None)  # the gate before training, epoch 0
    start_pair: tuple[int, int] | None = field(default=None)  # with init="best_pair"
    chosen_epoch: int | None = field(default=None)  # with keep_best_epoch: the epoch returned


# ``provide(rows, selected)`` -> scaled forecasts (b, E, H) of those rows; entries of experts
# not in ``selected`` (b, 2) may be NaN; ``selected=None`` asks for every expert.
_Provider = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def _masked_huber(
    pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor, delta: float
) -> torch.Tensor:
    """Mean ``HuberLoss(delta)`` over observed target points; ``(b, H)`` inputs -> scalar."""
    losses = F.huber_loss(pred, target, reduction="none", delta=delta)  # (b, H)
    return (losses * observed).sum() / observed.sum().clamp_min(1.0)


def best_pair(points: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """The two experts whose equal-weight average has the lowest MAE on these windows.

    ``points`` ``(N, E, H)`` and ``target`` ``(N, H)``, both scaled per window (so every
    window counts alike); NaN in ``target`` is left out. Ties go to the lower indices.
    """
    observed = ~torch.isnan(target)  # (N, H)
    filled = target.nan_to_num(0.0)
    best: tuple[float, tuple[int, int]] | None = None
    for first in range(points.shape[1]):
        for second in range(first + 1, points.shape[1]):
            average = (points[:, first] + points[:, second]) / 2  # (N, H)
            error = float(((average - filled).abs() * observed).sum() / observed.sum().clamp_min(1))
            if best is None or error < best[0]:
                best = (error, (first, second))
    if best is None:
        raise ValueError(f"need at least two experts, got points {tuple(points.shape)}")
    return best[1]


def _split(
    n_windows: int,
    config: TrainConfig,
    generator: torch.Generator,
    validation_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation row indices (int64)."""
    if validation_mask is not None:
        if validation_mask.shape != (n_windows,):
            raise ValueError(
                f"validation_mask must have shape ({n_windows},), "
                f"got {tuple(validation_mask.shape)}"
            )
        mask = validation_mask.to(torch.bool).cpu()
        return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)
    n_val = round(n_windows * config.val_fraction)
    if config.val_fraction > 0 and n_windows >= 2:
        n_val = min(max(n_val, 1), n_windows - 1)
    else:
        n_val = 0
    order = torch.randperm(n_windows, generator=generator)
    return order[n_val:], order[:n_val]


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Temporarily cap torch's intra-op threads (restored on exit; None leaves them alone).

    Why: a training step is ~50 kernels on a few hundred numbers. On a busy CPU, OpenMP
    worker hand-offs made such steps 10-50x slower with 2 threads than with 1 (measured).
    """
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _check_inputs(context: torch.Tensor, target: torch.Tensor) -> None:
    if context.ndim != 2 or target.ndim != 2 or context.shape[0] != target.shape[0]:
        raise ValueError(
            f"context (N, L) and target (N, H) must share N, got {tuple(context.shape)} "
            f"and {tuple(target.shape)}"
        )
    if context.shape[0] == 0:
        raise ValueError(
            "no training windows: every series is shorter than input_length + pred_length"
        )


def _loss_weight(context: torch.Tensor, scale: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """``(N, 1)`` factor from window-scale units to the loss's units (``config.loss_scale``)."""
    if config.loss_scale == "window":
        return torch.ones_like(scale)
    return scale / seasonal_naive_scale(context, config.season_length)


def _fit(
    context: torch.Tensor,
    target: torch.Tensor,
    n_experts: int,
    provide: _Provider,
    config: TrainConfig,
    validation_mask: torch.Tensor | None,
    loss_weight: torch.Tensor,
    cached_points: torch.Tensor | None = None,
) -> TrainResult:
    """The shared loop; ``context``/``target`` already scaled and on ``config.device``.

    ``loss_weight`` ``(N, 1)`` multiplies forecasts and target before the loss (window scale
    over loss scale; ones for the window scale). With ``cached_points`` (scaled
    ``(N, E, H)``) a linear gate trains through ``FastLinearTrainer`` (same math,
    hand-written gradients); otherwise through autograd.
    """
    if config.gate == "feature_pair":
        raise ValueError("the feature-pair gate trains on cached forecasts only (train_gate)")
    n_windows, input_length = context.shape
    pred_length = target.shape[1]
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        gate = build_gate(
            config.gate, input_length, pred_length, n_experts, config.gate_width, config.gate_heads
        )
    gate = gate.to(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    train_rows, val_rows = _split(n_windows, config, generator, validation_mask)
    if train_rows.numel() == 0:
        raise ValueError(
            f"no training windows left after holding out {val_rows.numel()} for validation"
        )
    target = target * loss_weight  # in loss units from here on; forecasts follow in forward()

    def weighted(rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Scaled forecasts ``(b, E, H)`` of ``rows`` in loss units."""
        return points * loss_weight[rows][:, :, None]

    start_pair = None
    if config.init == "best_pair":  # chosen on training rows only: validation stays unseen
        start_pair = config.start_pair
        if start_pair is None:
            rows = train_rows.to(config.device)
            start_pair = best_pair(weighted(rows, provide(rows, None)), target[rows])
        gate.start_at_pair(start_pair)
    observed = ~torch.isnan(target)  # (N, H)
    target = target.nan_to_num(0.0)
    optimizer: torch.optim.Optimizer | None = None

    def forward(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixed forecast (b, H) in loss units, probs (b, E), indices (b, 2) for ``rows``."""
        batch_context = context[rows]
        if gate.needs_forecasts:
            points = provide(rows, None)
            selection = select_top2(gate(batch_context, points))
        else:
            selection = select_top2(gate(batch_context, None))
            points = provide(rows, selection.indices)
        point = mix(selection, points).point * loss_weight[rows]  # (b, H)
        return point, selection.probs, selection.indices

    def evaluate(rows: torch.Tensor) -> tuple[float, float, list[float]]:
        """Loss, MAE and expert usage of the current gate on ``rows``, in one pass."""
        gate.eval()
        with torch.no_grad():
            rows = rows.to(config.device)
            point, _, indices = forward(rows)
            loss = _masked_huber(point, target[rows], observed[rows], config.huber_delta)
            mae = ((point - target[rows]).abs() * observed[rows]).sum() / observed[
                rows
            ].sum().clamp_min(1)
            usage = torch.zeros(n_experts).scatter_add_(
                0, indices.reshape(-1).cpu(), torch.ones(indices.numel())
            )
        gate.train()
        return float(loss), float(mae), (usage / rows.numel()).tolist()

    fast = None
    if cached_points is not None and isinstance(gate, LinearGate):
        fast = FastLinearTrainer(
            gate,
            context,
            target,
            observed,
            cached_points * loss_weight[:, :, None],
            config.lr,
            config.huber_delta,
            config.balance_weight,
        )

    def train_epoch(order: torch.Tensor) -> None:
        nonlocal optimizer
        if fast is not None:
            fast.epoch(order, config.batch_size)
            return
        if optimizer is None:  # created lazily: the first Adam costs seconds of imports
            optimizer = torch.optim.Adam(gate.parameters(), lr=config.lr)
        for rows in order.split(config.batch_size):
            point, probs, indices = forward(rows)
            loss = _masked_huber(point, target[rows], observed[rows], config.huber_delta)
            if config.balance_weight > 0:
                loss = loss + config.balance_weight * load_balancing_loss(probs, indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def measure(epoch: int) -> EpochMetrics:
        train_loss, _, _ = evaluate(train_rows)
        if val_rows.numel() > 0:
            val_loss, val_mae, usage = evaluate(val_rows)
            return EpochMetrics(epoch, train_loss, val_loss, val_mae, usage)
        return EpochMetrics(epoch, train_loss, None, None, None)

    history: list[EpochMetrics] = []
    gate.train()
    with _cpu_threads(1 if next(gate.parameters()).device.type == "cpu" else None):
        # a random gate before training is no candidate, so only the pair start is measured
        initial = measure(0) if start_pair is not None else None
        keep_best = config.keep_best_epoch and val_rows.numel() > 0
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        if keep_best and initial is not None and initial.val_mae is not None:
            best = (initial.val_mae, 0, copy.deepcopy(gate.state_dict()))
        for epoch in range(1, config.epochs + 1):
            order = train_rows[torch.randperm(train_rows.numel(), generator=generator)]
            train_epoch(order.to(config.device))
            history.append(measure(epoch))
            val_mae = history[-1].val_mae
            if keep_best and val_mae is not None and (best is None or val_mae < best[0]):
                best = (val_mae, epoch, copy.deepcopy(gate.state_dict()))
        chosen_epoch = None
        if best is not None:
            chosen_epoch = best[1]
            gate.load_state_dict(best[2])

    expert_val_mae = None
    if val_rows.numel() > 0:
        rows = val_rows.to(config.device)
        with torch.no_grad():
            points = weighted(rows, provide(rows, None))  # (v, E, H)
            errors = (points - target[rows][:, None, :]).abs() * observed[rows][:, None, :]
            expert_val_mae = (errors.sum(dim=(0, 2)) / observed[rows].sum().clamp_min(1)).tolist()
    gate.eval()
    return TrainResult(
        gate=gate.cpu(),
        config=config,
        history=history,
        n_train=int(train_rows.numel()),
        n_val=int(val_rows.numel()),
        expert_val_mae=expert_val_mae,
        initial=initial,
        start_pair=start_pair,
        chosen_epoch=chosen_epoch,
    )


def train_gate(
    context: torch.Tensor,
    target: torch.Tensor,
    points: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    validation_mask: torch.Tensor | None = None,
    engine: Literal["auto", "autograd"] = "auto",
    mase_scale: torch.Tensor | None = None,
    history: torch.Tensor | None = None,
    season_lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
) -> TrainResult:
    """Train a gate on cached expert forecasts, replaying top-2 dispatch with a gather.

    Args:
        context: ``(N, L)`` raw windows, NaN = missing.
        target: ``(N, H)`` raw targets, NaN = missing (left out of the loss).
        points: ``(N, E, H)`` cached point forecasts of every expert on every window.
        config: hyperparameters; ``TrainConfig()`` (the seed's) when None.
        validation_mask: ``(N,)`` bool, True = validation window; None = a seeded random
            ``config.val_fraction`` of the windows.
        engine: ``"auto"`` trains the linear gate with hand-written gradients (same result,
            several times faster); ``"autograd"`` forces the generic autograd loop.
        mase_scale: ``(N,)`` each window's MASE denominator, e.g. from per-series season
            lengths (``moe.scaling.mase_scales``); None: the seasonal-naive scale of the
            context with ``config.season_length``. Used with ``loss_scale="seasonal_naive"``
            and always by the feature-pair gate.
        history: ``(N, E)`` feature-pair gate with ``use_history``: each expert's past MASE
            on the same series (NaN = none).
        season_lengths: ``(N,)`` feature-pair gate: season of each window's features
            (None: ``config.season_length``).
        inputs: feature-pair gate: precomputed raw inputs ``(N, F')`` (shared by a grid).
    """
    config = config or TrainConfig()
    _check_inputs(context, target)
    if mase_scale is not None and mase_scale.reshape(-1).shape != (context.shape[0],):
        raise ValueError(
            f"mase_scale must have shape ({context.shape[0]},), got {tuple(mase_scale.shape)}"
        )
    if (
        points.ndim != 3
        or points.shape[0] != context.shape[0]
        or points.shape[2] != target.shape[1]
    ):
        raise ValueError(
            f"points must have shape (N={context.shape[0]}, E, H={target.shape[1]}), "
            f"got {tuple(points.shape)}"
        )
    bad = ~torch.isfinite(points).all(dim=2)  # (N, E)
    if bad.any():
        experts = bad.any(dim=0).nonzero().squeeze(1).tolist()
        raise ValueError(
            f"cached forecasts are NaN/inf in {int(bad.any(dim=1).sum())} windows "
            f"(expert positions {experts}); recompute or drop those windows"
        )
    if config.gate == "feature_pair":
        from moe.pair_training import train_pair_gate  # it imports this module

        if mase_scale is None:
            mase_scale = seasonal_naive_scale(context.float(), config.season_length)
        return train_pair_gate(
            context,
            target,
            points,
            config,
            validation_mask=validation_mask,
            mase_scale=mase_scale,
            history=history,
            season_lengths=season_lengths,
            inputs=inputs,
        )
    device = torch.device(config.device)
    context = context.to(device, torch.float32)
    scale = window_scale(context, config.scaling)  # (N, 1)
    scaled_points = scale_forecasts(points.to(device, torch.float32), scale)  # (N, E, H)
    weight = _loss_weight(context, scale, config)
    if mase_scale is not None and config.loss_scale == "seasonal_naive":
        weight = scale / mase_scale.reshape(-1, 1).to(scale)
    return _fit(
        scale_context(context, scale),
        target.to(device, torch.float32) / scale,
        points.shape[1],
        lambda rows, selected: scaled_points[rows],
        config,
        validation_mask,
        weight,
        cached_points=scaled_points if engine == "auto" else None,
    )


def train_gate_live(
    context: torch.Tensor,
    target: torch.Tensor,
    experts: Sequence[Expert],
    config: TrainConfig | None = None,
    *,
    validation_mask: torch.Tensor | None = None,
) -> TrainResult:
    """The seed's design: the chosen experts run inside every training step.

    Same arguments as ``train_gate`` but with ``experts`` instead of cached ``points``.
    Kept as the reference the cache is tested against, and for the speed benchmark.
    """
    config = config or TrainConfig()
    _check_inputs(context, target)
    device = torch.device(config.device)
    context = context.to(device, torch.float32)
    scale = window_scale(context, config.scaling)  # (N, 1)
    horizon = target.shape[1]

    def provide(rows: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor:
        points, _ = run_experts(experts, context[rows], horizon, selected)  # (b, E, H)
        return scale_forecasts(points, scale[rows])

    return _fit(
        scale_context(context, scale),
        target.to(device, torch.float32) / scale,
        len(experts),
        provide,
        config,
        validation_mask,
        _loss_weight(context, scale, config),
    )
