"""The seed's expert modules: ``forward(x)`` ``(B, input_length)`` -> ``(B, pred_length)``.

``MoiraiMoEExpert``, ``TimeMoEExpert`` and ``TimesFMExpert`` keep the seed's interface on top
of the registry's experts. They are frozen: no parameters are registered (the wrapped
model's weights stay out of ``parameters()`` and ``state_dict()``), and ``forward`` runs
under ``torch.no_grad()``, so nothing here is ever trained or saved with the gate.
"""

from __future__ import annotations

import torch
from torch import nn

from moe.experts.base import Expert, ExpertConfig
from moe.experts.registry import build_expert

__all__ = ["ExpertModule", "MoiraiMoEExpert", "TimeMoEExpert", "TimesFMExpert"]


class ExpertModule(nn.Module):
    """A frozen ``nn.Module`` view of one ``Expert`` with fixed input and output lengths."""

    expert: Expert

    def __init__(self, expert: Expert, input_length: int, pred_length: int) -> None:
        """Wrap ``expert`` for contexts of ``input_length`` and horizons of ``pred_length``."""
        super().__init__()
        if input_length < 1 or pred_length < 1:
            raise ValueError(
                f"input_length and pred_length must be >= 1, got {input_length}, {pred_length}"
            )
        # Kept outside nn.Module's registry on purpose: an expert that is itself a Module
        # must not add (trainable) parameters or weights to the gate's state_dict.
        object.__setattr__(self, "expert", expert)
        self.input_length = input_length
        self.pred_length = pred_length

    @property
    def name(self) -> str:
        """Registry name of the wrapped expert."""
        return self.expert.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Point forecasts ``x`` ``(B, input_length)`` -> ``(B, pred_length)``, on x's device."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.input_length:
            actual = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}: expected x of shape (B, {self.input_length}), got {actual}"
            )
        with torch.no_grad():
            return self.expert.forecast(x.float(), self.pred_length).point

    def extra_repr(self) -> str:
        return (
            f"expert={self.name!r}, input_length={self.input_length}, "
            f"pred_length={self.pred_length}"
        )


class _RegistryExpertModule(ExpertModule):
    """A seed expert class: the registry's expert ``registry_name`` as a frozen module."""

    registry_name: str

    def __init__(
        self,
        input_length: int,
        pred_length: int,
        device: str | torch.device | None = None,
        config: ExpertConfig | None = None,
    ) -> None:
        """Build the expert; ``device`` (seed argument) overrides ``config.device`` unless None.

        Without ``config`` the expert's default weights load on ``device`` (or the CPU).
        """
        config = config if config is not None else ExpertConfig()
        if device is not None and str(device) != config.device:
            config = config.model_copy(update={"device": str(device)})
        super().__init__(build_expert(self.registry_name, config), input_length, pred_length)


class MoiraiMoEExpert(_RegistryExpertModule):
    """The seed's Moirai-MoE expert (registry name ``moirai``)."""

    registry_name = "moirai"


class TimeMoEExpert(_RegistryExpertModule):
    """The seed's Time-MoE expert (registry name ``timemoe``)."""

    registry_name = "timemoe"


class TimesFMExpert(_RegistryExpertModule):
    """The seed's TimesFM expert (registry name ``timesfm``)."""

    registry_name = "timesfm"
