"""Run frozen experts over many windows in large batches (the expensive, cacheable part).

The store-facing cache lives in ``storage.cache``; this module only computes. It yields
batch by batch so a caller can persist each one as it finishes (resume after a crash).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from moe.experts.base import QUANTILE_LEVELS, Expert, ExpertForecast

__all__ = ["forecast_in_batches", "forecast_all"]


def _as_tensor(context: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(context, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(context, dtype=np.float32))
    return context.float()


def forecast_in_batches(
    expert: Expert,
    context: np.ndarray | torch.Tensor,
    horizon: int,
    batch_size: int,
    device: str | torch.device = "cpu",
) -> Iterator[tuple[slice, ExpertForecast]]:
    """Forecast ``context`` ``(N, L)`` in slices of ``batch_size`` rows.

    Yields ``(rows, forecast)`` with ``forecast.point`` ``(b, H)`` and quantiles
    ``(b, H, Q)`` or None, moved to the CPU once per batch (never per row).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows_total = context.shape[0]
    full = _as_tensor(context)
    for start in range(0, rows_total, batch_size):
        rows = slice(start, min(start + batch_size, rows_total))
        batch = full[rows].to(device, non_blocking=True)
        with torch.no_grad():
            result = expert.forecast(batch, horizon)
        expected = (rows.stop - rows.start, horizon)
        if tuple(result.point.shape) != expected:
            raise RuntimeError(
                f"expert {expert.name!r} returned point shape {tuple(result.point.shape)}, "
                f"expected {expected}"
            )
        quantiles = None if result.quantiles is None else result.quantiles.float().cpu()
        yield rows, ExpertForecast(point=result.point.float().cpu(), quantiles=quantiles)


def forecast_all(
    experts: Sequence[Expert],
    context: np.ndarray | torch.Tensor,
    horizon: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every expert on every window, in memory.

    Returns ``points`` ``(N, E, H)`` and ``quantiles`` ``(N, E, H, Q)`` (NaN where an
    expert has no quantiles), expert axis in the order of ``experts``.
    """
    rows_total = context.shape[0]
    points = torch.full((rows_total, len(experts), horizon), float("nan"))
    quantiles = torch.full((rows_total, len(experts), horizon, len(QUANTILE_LEVELS)), float("nan"))
    for index, expert in enumerate(experts):
        for rows, result in forecast_in_batches(expert, context, horizon, batch_size, device):
            points[rows, index] = result.point
            if result.quantiles is not None:
                quantiles[rows, index] = result.quantiles
    return points, quantiles
