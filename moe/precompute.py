"""Run frozen experts over many windows in large batches (the expensive, cacheable part).

The store-facing cache lives in ``storage.cache``; this module only computes. It yields
batch by batch so a caller can persist each one as it finishes (resume after a crash).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from moe.experts.base import QUANTILE_LEVELS, Expert, ExpertForecast, for_season

__all__ = [
    "forecast_in_batches",
    "forecast_all",
    "season_groups",
    "experts_for_season",
]


def _as_tensor(context: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(context, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(context, dtype=np.float32))
    return context.float()


def forecast_in_batches(
    expert: Expert,
    context: np.ndarray | torch.Tensor,
    pred_length: int,
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
            result = expert.forecast(batch, pred_length)
        expected = (rows.stop - rows.start, pred_length)
        if tuple(result.point.shape) != expected:
            raise RuntimeError(
                f"expert {expert.name!r} returned point shape {tuple(result.point.shape)}, "
                f"expected {expected}"
            )
        quantiles = None if result.quantiles is None else result.quantiles.float().cpu()
        yield rows, ExpertForecast(point=result.point.float().cpu(), quantiles=quantiles)


def season_groups(season_lengths: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``(N,)`` season lengths -> ``[(m, rows)]`` with ``rows`` the ``(n_m,)`` positions of
    season ``m``, ``m`` ascending; every position appears in exactly one group."""
    seasons = np.asarray(season_lengths, np.int64)
    return [(int(m), np.flatnonzero(seasons == m)) for m in np.unique(seasons)]


def experts_for_season(experts: Sequence[Expert], season_length: int) -> list[Expert]:
    """Each expert configured for ``season_length`` (season-free experts pass through)."""
    return [for_season(expert, season_length) for expert in experts]


def forecast_all(
    experts: Sequence[Expert],
    context: np.ndarray | torch.Tensor,
    pred_length: int,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    season_lengths: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every expert on every window, in memory.

    Returns ``points`` ``(N, E, H)`` and ``quantiles`` ``(N, E, H, Q)`` (NaN where an
    expert has no quantiles), expert axis in the order of ``experts``. ``season_lengths``
    ``(N,)``: each window's period; season-aware experts then run once per distinct period
    on that period's windows (as the retrain's cache does). None: the experts as configured.
    """
    rows_total = context.shape[0]
    points = torch.full((rows_total, len(experts), pred_length), float("nan"))
    quantiles = torch.full(
        (rows_total, len(experts), pred_length, len(QUANTILE_LEVELS)), float("nan")
    )
    if season_lengths is None:
        _forecast_into(points, quantiles, experts, context, None, pred_length, batch_size, device)
        return points, quantiles
    for season, rows in season_groups(season_lengths):
        variants = experts_for_season(experts, season)
        part = context[rows] if isinstance(context, np.ndarray) else context[torch.from_numpy(rows)]
        _forecast_into(points, quantiles, variants, part, rows, pred_length, batch_size, device)
    return points, quantiles


def _forecast_into(
    points: torch.Tensor,
    quantiles: torch.Tensor,
    experts: Sequence[Expert],
    context: np.ndarray | torch.Tensor,
    rows: np.ndarray | None,
    pred_length: int,
    batch_size: int,
    device: str | torch.device,
) -> None:
    """Write each expert's forecasts of ``context`` ``(n, L)`` into ``points`` ``(N, E, H)``
    and ``quantiles`` ``(N, E, H, Q)`` at ``rows`` ``(n,)`` (None: all rows, in order)."""
    for index, expert in enumerate(experts):
        for batch, result in forecast_in_batches(expert, context, pred_length, batch_size, device):
            where = batch if rows is None else torch.from_numpy(rows[batch])
            points[where, index] = result.point
            if result.quantiles is not None:
                quantiles[where, index] = result.quantiles
