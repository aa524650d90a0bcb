"""The two ways to train a gate: on the expert-forecast cache (fast) or with experts live.

Both check their inputs, scale them per window (``moe.scaling``) and hand them to the same
trainer (``moe.training.trainer.fit``; the feature-pair gate to ``moe.training.pair``);
they differ only in where a batch's expert forecasts come from. With the same seed they
train the same gate, so the cache is a pure speed-up.

Shapes: ``context`` ``(N, L)``, ``target`` ``(N, H)`` (NaN = missing, left out of the
loss), ``points`` ``(N, E, H)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from moe.experts.base import Expert
from moe.scaling import (
    scale_context,
    scale_forecasts,
    seasonal_naive_scale,
    window_scale,
)
from moe.training.config import TrainConfig
from moe.training.pair import train_pair_gate
from moe.training.results import TrainResult
from moe.training.trainer import CachedForecasts, LiveForecasts, ScaledWindows, fit

__all__ = ["train_gate", "train_gate_live"]


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


def _check_points(context: torch.Tensor, target: torch.Tensor, points: torch.Tensor) -> None:
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


def _loss_weight(context: torch.Tensor, scale: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """``(N, 1)`` factor from window-scale units to the loss's units (``config.loss_scale``)."""
    if config.loss_scale == "window":
        return torch.ones_like(scale)
    return scale / seasonal_naive_scale(context, config.season_length)


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
    _check_points(context, target, points)
    if config.gate == "feature_pair":
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
    windows = ScaledWindows(
        context=scale_context(context, scale),
        target=target.to(device, torch.float32) / scale,
        loss_weight=weight,
        forecasts=CachedForecasts(scaled_points),
        n_experts=points.shape[1],
        cached=scaled_points if engine == "auto" else None,
    )
    return fit(windows, config, validation_mask)


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
    windows = ScaledWindows(
        context=scale_context(context, scale),
        target=target.to(device, torch.float32) / scale,
        loss_weight=_loss_weight(context, scale, config),
        forecasts=LiveForecasts(experts, context, target.shape[1], scale),
        n_experts=len(experts),
    )
    return fit(windows, config, validation_mask)
