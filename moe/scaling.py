"""Per-window scaling, so that one gate serves series on any scale.

Each window is divided by the mean absolute value of its observed context (NaN ignored).
The gate sees the scaled context, and the training loss compares scaled forecasts with
the scaled target, so a series multiplied by 10^4 trains exactly the same gate and
``HuberLoss(delta=2.0)`` means "two context-means" on every series.

Shapes: ``context`` ``(N, L)``, ``scale`` ``(N, 1)``; forecasts ``(N, E, H)`` are divided
by ``scale[:, :, None]``.
"""

from __future__ import annotations

from typing import Literal

import torch

from moe.metrics import positive_scale

__all__ = [
    "ScalingMethod",
    "window_scale",
    "seasonal_naive_scale",
    "mase_scales",
    "scale_context",
    "scale_forecasts",
]

ScalingMethod = Literal["mean_abs", "none"]


def window_scale(context: torch.Tensor, method: ScalingMethod = "mean_abs") -> torch.Tensor:
    """Scale of each window: mean |observed value| of ``context`` ``(N, L)`` -> ``(N, 1)``.

    Falls back to 1 where the scale is not a positive finite number (all missing, all zero),
    so that no division by zero or NaN reaches the gate. ``method="none"`` returns ones
    (used to load the seed's unscaled gates).
    """
    if context.ndim != 2:
        raise ValueError(f"context must have shape (N, L), got {tuple(context.shape)}")
    if method == "none":
        return torch.ones(context.shape[0], 1, dtype=context.dtype, device=context.device)
    if method != "mean_abs":
        raise ValueError(f"unknown scaling method {method!r}; expected 'mean_abs' or 'none'")
    scale = context.abs().nanmean(dim=1, keepdim=True)  # (N, 1), NaN when all missing
    usable = torch.isfinite(scale) & (scale > 0)
    return torch.where(usable, scale, torch.ones_like(scale))


def seasonal_naive_scale(context: torch.Tensor, season_length: int) -> torch.Tensor:
    """MASE's denominator inside each window as a loss scale: ``(N, L)`` -> ``(N, 1)``.

    ``moe.metrics.positive_scale`` (mean ``|x_t - x_{t-m}|`` over observed pairs, falling
    back to lag 1, then the mean |value|, then 1), so a scale is always positive and finite.
    """
    if context.ndim != 2:
        raise ValueError(f"context must have shape (N, L), got {tuple(context.shape)}")
    if season_length < 1:
        raise ValueError(f"season_length must be >= 1, got {season_length}")
    return mase_scales(context, season_length)[:, None]


def mase_scales(context: torch.Tensor, season_lengths: torch.Tensor | int) -> torch.Tensor:
    """``seasonal_naive_scale`` with one season per window: ``(N, L)``, ``(N,)`` -> ``(N,)``.

    Lets series of different frequencies (monthly 12, quarterly 4, ...) share one loss in
    MASE units.
    """
    seasons = torch.as_tensor(season_lengths, dtype=torch.int64).reshape(-1)
    if seasons.numel() == 1:
        seasons = seasons.expand(context.shape[0])
    if seasons.shape != (context.shape[0],):
        raise ValueError(
            f"season_lengths must have shape ({context.shape[0]},), got {tuple(seasons.shape)}"
        )
    values = context.detach().to("cpu", torch.float64).numpy()
    scale = positive_scale(values, seasons.cpu().numpy())
    return torch.from_numpy(scale).to(dtype=context.dtype, device=context.device)


def scale_context(context: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Gate input: ``context`` ``(N, L)`` divided by ``scale`` ``(N, 1)``, NaN replaced by 0.

    Zero is the scaled series' neutral value (its mean |value| is 1), so a missing point
    neither adds nor removes evidence for an expert in the linear gate.
    """
    return (context / scale).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def scale_forecasts(forecasts: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Divide forecasts ``(N, E, H)`` (or ``(N, H)``) by the window scale ``(N, 1)``."""
    if forecasts.ndim == 3:
        return forecasts / scale[:, :, None]
    return forecasts / scale
