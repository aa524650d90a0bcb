"""Small shared pieces for the gate tests: recording experts and synthetic windows."""

from __future__ import annotations

import torch

from moe.experts.base import ExpertForecast
from moe.experts.fake import FakeForecaster, fake_trio

__all__ = ["RecordingExpert", "recording_trio", "synthetic_windows"]


class RecordingExpert(FakeForecaster):
    """A ``FakeForecaster`` that also keeps every batch it was called with."""

    def __init__(self, name: str, factor: float = 1.0, offset: float = 0.0) -> None:
        super().__init__(name, factor, offset)
        self.batches: list[torch.Tensor] = []

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        self.batches.append(context.clone())
        return super().forecast(context, horizon)


def recording_trio() -> list[RecordingExpert]:
    """Recording versions of ``fake_trio()`` (same names, factors and offsets)."""
    return [RecordingExpert(e.name, e.factor, e.offset) for e in fake_trio()]


def synthetic_windows(
    n_windows: int, input_length: int, pred_length: int, seed: int = 0, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random-walk windows: ``context`` ``(N, L)``, ``target`` ``(N, H)``, times ``scale``."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randn(n_windows, input_length + pred_length, generator=generator)
    level = 5.0 + 3.0 * torch.rand(n_windows, 1, generator=generator)
    series = (level + 0.3 * steps.cumsum(dim=1)) * scale
    return series[:, :input_length].contiguous(), series[:, input_length:].contiguous()
