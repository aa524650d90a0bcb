"""The trainer of the linear and contextual gates: split, init, epochs, measure, keep best.

``fit`` is the whole recipe in named steps; ``GateTrainer`` holds the state they share
(the gate, its optimiser, the windows in loss units) and does one step per method.
Where a batch's expert forecasts come from is a ``ForecastSource``: a gather from the
cached ``(N, E, H)`` tensor (``CachedForecasts``) or the chosen experts run on the batch
as the seed did (``LiveForecasts``). The mixing is the router's (``select_top2``, ``mix``).

Units: the windows arrive scaled per window (``moe.scaling``); ``loss_weight`` ``(N, 1)``
turns window-scale units into the loss's units (ones unless ``loss_scale`` is
``"seasonal_naive"``), for the target once and for each batch's forecasts as they come.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.nn import functional as F

from moe._fast_linear import FastLinearTrainer
from moe.experts.base import Expert
from moe.gates import ContextualGate, LinearGate, build_gate, load_balancing_loss
from moe.router import mix, run_experts, select_top2
from moe.scaling import scale_forecasts
from moe.training.config import TrainConfig
from moe.training.results import EpochMetrics, TrainResult
from moe.training.steps import (
    Epochs,
    absolute_errors,
    cpu_threads,
    random_split,
    run_epochs,
    split_by_mask,
)

__all__ = [
    "ForecastSource",
    "CachedForecasts",
    "LiveForecasts",
    "ScaledWindows",
    "GateTrainer",
    "best_pair",
    "fit",
]


class ForecastSource(Protocol):
    """Scaled forecasts ``(b, E, H)`` of rows ``(b,)``; entries of experts not in
    ``selected`` ``(b, 2)`` may be NaN; ``selected=None`` asks for every expert."""

    def __call__(self, rows: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor: ...


class CachedForecasts:
    """A gather from the cache ``points`` ``(N, E, H)``, already scaled per window."""

    def __init__(self, points: torch.Tensor) -> None:
        self.points = points

    def __call__(self, rows: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor:
        return self.points[rows]


class LiveForecasts:
    """The experts run on the batch's raw ``context`` ``(N, L)`` rows, scaled by ``scale``
    ``(N, 1)``; with ``selected`` only the chosen experts run (sparse dispatch)."""

    def __init__(
        self,
        experts: Sequence[Expert],
        context: torch.Tensor,
        pred_length: int,
        scale: torch.Tensor,
    ) -> None:
        self.experts = experts
        self.context = context
        self.pred_length = pred_length
        self.scale = scale

    def __call__(self, rows: torch.Tensor, selected: torch.Tensor | None) -> torch.Tensor:
        points, _ = run_experts(self.experts, self.context[rows], self.pred_length, selected)
        return scale_forecasts(points, self.scale[rows])  # (b, E, H)


@dataclass(frozen=True)
class ScaledWindows:
    """Training windows in the gate's units, on the training device.

    ``context`` ``(N, L)`` scaled, no NaN; ``target`` ``(N, H)`` scaled, NaN = missing;
    ``loss_weight`` ``(N, 1)``; ``cached`` the scaled ``(N, E, H)`` cache when the linear gate
    may train through ``FastLinearTrainer`` (same math, hand-written gradients), else None.
    """

    context: torch.Tensor
    target: torch.Tensor
    loss_weight: torch.Tensor
    forecasts: ForecastSource
    n_experts: int
    cached: torch.Tensor | None = None


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


def _masked_huber(
    pred: torch.Tensor, target: torch.Tensor, observed: torch.Tensor, delta: float
) -> torch.Tensor:
    """Mean ``HuberLoss(delta)`` over observed target points; ``(b, H)`` inputs -> scalar."""
    losses = F.huber_loss(pred, target, reduction="none", delta=delta)  # (b, H)
    return (losses * observed).sum() / observed.sum().clamp_min(1.0)


def _seeded_gate(windows: ScaledWindows, config: TrainConfig) -> LinearGate | ContextualGate:
    """A fresh gate of ``config.gate``, initialised from ``config.seed`` on its device."""
    if config.gate == "feature_pair":
        raise ValueError("the feature-pair gate trains on cached forecasts only (train_gate)")
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(config.seed)
        gate = build_gate(
            config.gate,
            windows.context.shape[1],
            windows.target.shape[1],
            windows.n_experts,
            config.gate_width,
            config.gate_heads,
        )
    if not isinstance(gate, LinearGate | ContextualGate):  # unreachable: refused above
        raise TypeError(f"expected a linear or contextual gate, got {type(gate).__name__}")
    return gate.to(config.device)


class GateTrainer:
    """One linear or contextual gate, its optimiser and the windows it trains on."""

    def __init__(
        self,
        gate: LinearGate | ContextualGate,
        windows: ScaledWindows,
        config: TrainConfig,
        train_rows: torch.Tensor,
        val_rows: torch.Tensor,
    ) -> None:
        self.gate = gate
        self.config = config
        self.context = windows.context
        self.loss_weight = windows.loss_weight
        self.forecasts = windows.forecasts
        self.n_experts = windows.n_experts
        self.train_rows = train_rows
        self.val_rows = val_rows
        target = windows.target * windows.loss_weight  # (N, H) loss units, NaN = missing
        self.start_pair = self._start(target)
        self.observed = ~torch.isnan(target)  # (N, H)
        self.target = target.nan_to_num(0.0)
        self._fast = self._fast_engine(windows.cached)
        self._optimizer: torch.optim.Optimizer | None = None  # made at the first autograd epoch

    def _start(self, target: torch.Tensor) -> tuple[int, int] | None:
        """Init step: with ``init="best_pair"`` move the gate to its starting pair, chosen
        on the training rows only (validation stays unseen)."""
        if self.config.init != "best_pair":
            return None
        pair = self.config.start_pair
        if pair is None:
            rows = self.train_rows.to(self.config.device)
            pair = best_pair(self._in_loss_units(rows, self.forecasts(rows, None)), target[rows])
        self.gate.start_at_pair(pair)
        return pair

    def _fast_engine(self, cached: torch.Tensor | None) -> FastLinearTrainer | None:
        if cached is None or not isinstance(self.gate, LinearGate):
            return None
        return FastLinearTrainer(
            self.gate,
            self.context,
            self.target,
            self.observed,
            cached * self.loss_weight[:, :, None],
            self.config.lr,
            self.config.huber_delta,
            self.config.balance_weight,
        )

    def _in_loss_units(self, rows: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Scaled forecasts ``(b, E, H)`` of ``rows`` in loss units."""
        return points * self.loss_weight[rows][:, :, None]

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixed forecast (b, H) in loss units, probs (b, E), indices (b, 2) for ``rows``."""
        batch_context = self.context[rows]
        if self.gate.needs_forecasts:
            points = self.forecasts(rows, None)
            selection = select_top2(self.gate(batch_context, points))
        else:
            selection = select_top2(self.gate(batch_context, None))
            points = self.forecasts(rows, selection.indices)
        point = mix(selection, points).point * self.loss_weight[rows]  # (b, H)
        return point, selection.probs, selection.indices

    def train_epoch(self, order: torch.Tensor) -> None:
        """Epoch step: one pass over ``order`` (shuffled training rows) in batches."""
        order = order.to(self.config.device)
        if self._fast is not None:
            self._fast.epoch(order, self.config.batch_size)
            return
        if self._optimizer is None:  # created lazily: the first Adam costs seconds of imports
            self._optimizer = torch.optim.Adam(self.gate.parameters(), lr=self.config.lr)
        for rows in order.split(self.config.batch_size):
            point, probs, indices = self.forward(rows)
            loss = _masked_huber(
                point, self.target[rows], self.observed[rows], self.config.huber_delta
            )
            if self.config.balance_weight > 0:
                loss = loss + self.config.balance_weight * load_balancing_loss(probs, indices)
            self._optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._optimizer.step()

    def evaluate(self, rows: torch.Tensor) -> tuple[float, float, list[float]]:
        """Loss, MAE and expert usage of the current gate on ``rows``, in one pass."""
        self.gate.eval()
        with torch.no_grad():
            rows = rows.to(self.config.device)
            point, _, indices = self.forward(rows)
            target, observed = self.target[rows], self.observed[rows]
            loss = _masked_huber(point, target, observed, self.config.huber_delta)
            mae = absolute_errors(point[:, None, :], target, observed, per_window=False)
            usage = torch.zeros(self.n_experts).scatter_add_(
                0, indices.reshape(-1).cpu(), torch.ones(indices.numel())
            )
        self.gate.train()
        return float(loss), float(mae), (usage / rows.numel()).tolist()

    def measure(self, epoch: int) -> EpochMetrics:
        """Measure step: training loss, and validation loss, MAE and usage when validated."""
        train_loss, _, _ = self.evaluate(self.train_rows)
        if self.val_rows.numel() > 0:
            val_loss, val_mae, usage = self.evaluate(self.val_rows)
            return EpochMetrics(epoch, train_loss, val_loss, val_mae, usage)
        return EpochMetrics(epoch, train_loss, None, None, None)

    def expert_val_mae(self) -> list[float] | None:
        """Each single expert's MAE on the validation rows (the gate's baseline), or None."""
        if self.val_rows.numel() == 0:
            return None
        rows = self.val_rows.to(self.config.device)
        with torch.no_grad():
            points = self._in_loss_units(rows, self.forecasts(rows, None))  # (v, E, H)
            errors = absolute_errors(
                points, self.target[rows], self.observed[rows], per_window=False
            )
        return errors.tolist()

    def result(self, epochs: Epochs) -> TrainResult:
        """The trained gate (eval mode, on the CPU) and how it got there."""
        expert_val_mae = self.expert_val_mae()
        self.gate.eval()
        return TrainResult(
            gate=self.gate.cpu(),
            config=self.config,
            history=epochs.history,
            n_train=int(self.train_rows.numel()),
            n_val=int(self.val_rows.numel()),
            expert_val_mae=expert_val_mae,
            initial=epochs.initial,
            start_pair=self.start_pair,
            chosen_epoch=epochs.chosen_epoch,
        )


def fit(
    windows: ScaledWindows, config: TrainConfig, validation_mask: torch.Tensor | None
) -> TrainResult:
    """Train a linear or contextual gate on ``windows``: the steps in order."""
    gate = _seeded_gate(windows, config)  # init: seeded weights
    generator = torch.Generator().manual_seed(config.seed)  # split, then each epoch's order
    n_windows = windows.context.shape[0]
    if validation_mask is not None:  # split
        train_rows, val_rows = split_by_mask(n_windows, validation_mask)
    else:
        train_rows, val_rows = random_split(n_windows, config.val_fraction, generator)
    if train_rows.numel() == 0:
        raise ValueError(
            f"no training windows left after holding out {val_rows.numel()} for validation"
        )
    trainer = GateTrainer(gate, windows, config, train_rows, val_rows)  # init: start pair
    gate.train()
    with cpu_threads(1 if next(gate.parameters()).device.type == "cpu" else None):
        # a random gate before training is no candidate, so only the pair start is measured
        epochs = run_epochs(
            trainer, config, generator, measure_start=trainer.start_pair is not None
        )
    return trainer.result(epochs)
