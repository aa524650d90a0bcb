"""The one gap filler: interior gaps linearly interpolated, trailing gaps held.

Experts and season detection read series with missing points (NaN). Time-MoE fills whole
batches on its device (``fill_gaps``); statsforecast models and the season detector fill
one row at a time (``fill_row``), through the same code.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

__all__ = ["fill_gaps", "fill_row"]


def fill_gaps(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Interior gaps: linear interpolation; trailing gaps: last value carried forward.

    Args:
        values: ``(b, T)`` float, ``NaN`` = missing, finite otherwise.

    Returns:
        ``filled`` ``(b, T)`` (leading gaps stay ``NaN``) and ``observed`` ``(b, T)`` bool.
    """
    observed = ~torch.isnan(values)
    length = values.shape[1]
    index = torch.arange(length, device=values.device).expand_as(values)  # (b, T)
    previous = torch.where(observed, index, -1).cummax(dim=1).values  # last observed <= t
    following = torch.where(observed, index, length).flip(1).cummin(dim=1).values.flip(1)
    has_previous, has_following = previous >= 0, following < length
    left = values.gather(1, previous.clamp(min=0))
    right = values.gather(1, following.clamp(max=length - 1))
    span = (following - previous).clamp(min=1).to(values.dtype)
    weight = (index - previous).to(values.dtype) / span
    interpolated = torch.where(has_following, left + (right - left) * weight, left)
    filled = torch.where(observed, values, torch.where(has_previous, interpolated, values))
    return filled, observed


def fill_row(row: np.ndarray, trailing: Literal["hold", "drop"] = "hold") -> np.ndarray:
    """``(L,)`` with NaN -> ``(n,)`` without: leading NaN dropped, interior gaps interpolated,
    trailing gaps held at the last value (``"hold"``) or dropped (``"drop"``).

    A row with no observed value gives ``(0,)``. Computed in float64 whatever ``row`` is.
    """
    values = np.asarray(row, np.float64)
    observed = ~np.isnan(values)
    if not observed.any():
        return values[:0]
    first = int(np.argmax(observed))
    last = len(values) - int(np.argmax(observed[::-1])) if trailing == "drop" else len(values)
    values = values[first:last]
    if not np.isnan(values).any():
        return values.copy()
    # A copy: ``row`` may be a read-only view (an Arrow column), which torch.from_numpy
    # takes with a warning about undefined behaviour on stderr.
    filled, _ = fill_gaps(torch.from_numpy(values.copy())[None, :])
    return filled[0].numpy()
