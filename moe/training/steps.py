"""The steps every gate fit shares: split, epoch loop, keep best, per-expert baseline.

A trainer (``moe.training.trainer.GateTrainer``, ``moe.training.pair.PairTrainer``) owns
its gate and says how to train one epoch and how to measure the gate (``EpochSteps``);
``run_epochs`` runs the shuffled epochs and keeps the best one the same way for both.

Shapes: ``target`` ``(n, H)`` with NaN already replaced by 0, ``observed`` ``(n, H)`` bool,
forecasts ``(n, K, H)`` (K experts or pairs).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from moe.training.config import TrainConfig
from moe.training.results import EpochMetrics

__all__ = [
    "EpochSteps",
    "Epochs",
    "KeepBest",
    "absolute_errors",
    "cpu_threads",
    "random_split",
    "split_by_mask",
    "run_epochs",
]


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
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


def split_by_mask(
    n_windows: int, validation_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation row indices (int64) of an explicit ``(N,)`` mask (True = val)."""
    if validation_mask.shape != (n_windows,):
        raise ValueError(
            f"validation_mask must have shape ({n_windows},), got {tuple(validation_mask.shape)}"
        )
    mask = validation_mask.to(torch.bool).cpu()
    return (~mask).nonzero().squeeze(1), mask.nonzero().squeeze(1)


def random_split(
    n_windows: int, val_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random ``val_fraction`` of the rows for validation (at least one when there
    are two or more rows and ``val_fraction > 0``): train and validation indices (int64)."""
    n_val = round(n_windows * val_fraction)
    if val_fraction > 0 and n_windows >= 2:
        n_val = min(max(n_val, 1), n_windows - 1)
    else:
        n_val = 0
    order = torch.randperm(n_windows, generator=generator)
    return order[n_val:], order[:n_val]


def absolute_errors(
    forecasts: torch.Tensor, target: torch.Tensor, observed: torch.Tensor, *, per_window: bool
) -> torch.Tensor:
    """MAE of each of ``K`` forecasts ``(n, K, H)`` over the observed target points.

    ``per_window=False``: ``(K,)`` pooled over every observed point (as the linear and
    contextual gates' ``val_mae``); ``per_window=True``: ``(n, K)``, each window's own mean
    (as the feature-pair gate's MASE; a window without observed target scores 0).
    """
    errors = (forecasts - target[:, None, :]).abs() * observed[:, None, :]
    if per_window:
        return errors.sum(dim=2) / observed.sum(dim=1, keepdim=True).clamp_min(1)
    return errors.sum(dim=(0, 2)) / observed.sum().clamp_min(1)


class KeepBest:
    """Remembers the gate's state at the epoch with the lowest validation MAE (early stopping).

    Strictly lower wins, so a tie keeps the earlier (simpler) epoch. Disabled, it keeps
    nothing and the caller's gate stays as the last epoch left it.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.val_mae = float("inf")
        self.epoch: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, metrics: EpochMetrics, gate: nn.Module) -> None:
        """Keep ``gate``'s state if ``metrics`` is the best validated epoch so far."""
        if not self.enabled or metrics.val_mae is None:
            return
        if self.state is None or metrics.val_mae < self.val_mae:
            self.val_mae = metrics.val_mae
            self.epoch = metrics.epoch
            self.state = copy.deepcopy(gate.state_dict())

    def restore(self, gate: nn.Module) -> int | None:
        """Load the kept state into ``gate``; the chosen epoch, or None when none was kept."""
        if self.state is None:
            return None
        gate.load_state_dict(self.state)
        return self.epoch


class EpochSteps(Protocol):
    """What ``run_epochs`` needs from a trainer."""

    @property
    def gate(self) -> nn.Module:
        """The gate being trained (its state is what ``KeepBest`` keeps)."""
        ...

    @property
    def train_rows(self) -> torch.Tensor:
        """``(n_train,)`` int64 row indices."""
        ...

    @property
    def val_rows(self) -> torch.Tensor:
        """``(n_val,)`` int64 row indices (may be empty)."""
        ...

    def train_epoch(self, order: torch.Tensor) -> None:
        """One pass over the training rows in this (shuffled) order."""
        ...

    def measure(self, epoch: int) -> EpochMetrics:
        """The current gate's metrics on the training and validation rows."""
        ...


@dataclass(frozen=True)
class Epochs:
    """What the epoch loop saw: every epoch, the start (if measured) and the epoch kept."""

    history: list[EpochMetrics]
    initial: EpochMetrics | None
    chosen_epoch: int | None


def run_epochs(
    steps: EpochSteps, config: TrainConfig, generator: torch.Generator, *, measure_start: bool
) -> Epochs:
    """``config.epochs`` shuffled epochs, each measured; with ``keep_best_epoch`` (and
    validation rows) the gate ends at its best epoch, the start (epoch 0) included when
    ``measure_start``. ``generator`` draws each epoch's order."""
    keep = KeepBest(config.keep_best_epoch and steps.val_rows.numel() > 0)
    initial = steps.measure(0) if measure_start else None
    if initial is not None:
        keep.offer(initial, steps.gate)
    history: list[EpochMetrics] = []
    for epoch in range(1, config.epochs + 1):
        order = steps.train_rows[torch.randperm(steps.train_rows.numel(), generator=generator)]
        steps.train_epoch(order)
        history.append(steps.measure(epoch))
        keep.offer(history[-1], steps.gate)
    return Epochs(history, initial, keep.restore(steps.gate))
