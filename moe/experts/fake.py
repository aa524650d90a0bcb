"""Deterministic fake experts that satisfy the Expert protocol.

Used by the tests and by the benchmarks that measure overheads (orchestration, storage,
gate) without expert compute; never registered, so no job can pick one by name. Each fake
forecasts ``offset + factor * last_observed_value`` for every step, with symmetric
quantiles around it. ``calls`` counts rows forecast, so tests can assert that an expert
did (or did not) run.
"""

from __future__ import annotations

import torch

from moe.experts.base import QUANTILE_LEVELS, Expert, ExpertCapabilities, ExpertForecast

__all__ = ["FakeForecaster", "fake_trio"]


class FakeForecaster:
    """``point[b, h] = offset + factor * last observed value of row b`` (NaN-aware)."""

    def __init__(self, name: str, factor: float = 1.0, offset: float = 0.0) -> None:
        self.name = name
        self.factor = factor
        self.offset = offset
        self.calls = 0  # rows forecast so far
        self.capabilities = ExpertCapabilities(
            max_context=None,
            min_context=1,
            native_horizon=None,
            quantile_levels=QUANTILE_LEVELS,
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        return f"fake:{self.name}:factor={self.factor}:offset={self.offset}"

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        observed = ~torch.isnan(context)  # (B, L)
        positions = torch.arange(context.shape[1], device=context.device).expand_as(context)
        last_index = torch.where(observed, positions, -1).max(dim=1).values.clamp(min=0)  # (B,)
        last = context.gather(1, last_index[:, None]).nan_to_num(0.0)  # (B, 1)
        point = (self.offset + self.factor * last).expand(-1, horizon).contiguous()  # (B, H)
        spread = torch.tensor([q - 0.5 for q in QUANTILE_LEVELS], device=context.device)
        quantiles = point[:, :, None] + spread * (1.0 + point.abs()[:, :, None])  # (B, H, Q)
        self.calls += context.shape[0]
        return ExpertForecast(point=point.float(), quantiles=quantiles.float())


def fake_trio() -> list[Expert]:
    """Three distinguishable fakes named like the seed's experts."""
    return [
        FakeForecaster("moirai", factor=1.0),
        FakeForecaster("timemoe", factor=0.5, offset=1.0),
        FakeForecaster("timesfm", factor=2.0, offset=-1.0),
    ]
