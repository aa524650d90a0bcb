"""The one protocol every forecasting expert implements.

Layout contract (documented once, used everywhere):

* context: ``torch.Tensor`` of shape ``(B, L)``, float32, ``NaN`` marks a missing value.
  The most recent observation is the last column. Adapters never modify it in place.
* ``ExpertForecast.point``: ``(B, H)`` float32.
* ``ExpertForecast.quantiles``: ``(B, H, Q)`` float32 with ``Q == len(QUANTILE_LEVELS)``,
  axis order (series, horizon, quantile), levels ascending as in ``QUANTILE_LEVELS``.
  A level the model cannot produce is ``NaN`` in every entry; ``None`` when the model has
  no probabilistic output at all.
* Outputs live on the same device as the context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "QUANTILE_LEVELS",
    "ExpertCapabilities",
    "ExpertConfig",
    "ExpertForecast",
    "Expert",
    "ExpertLoadError",
    "MissingExtraError",
    "TORCH_DTYPES",
    "torch_dtype",
    "SeasonAware",
    "for_season",
    "LegacyKeyed",
    "legacy_cache_keys",
]

#: The torch dtype of each ``ExpertConfig.dtype`` name (the one map every adapter uses).
TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: Quantile levels of the cached/stored layout, ascending. 0.05 and 0.95 give a 90% interval.
QUANTILE_LEVELS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


class ExpertConfig(BaseModel):
    """How to load and run one expert. Decided by the caller, never inside a constructor."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str | None = Field(
        default=None,
        description="Hub id or local directory of the weights; None means the expert's default.",
    )
    revision: str | None = Field(
        default=None, description="Pinned hub revision (commit or tag); None means 'main'."
    )
    device: str = Field(default="cpu", description="torch device string, e.g. 'cpu' or 'cuda:0'.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Compute dtype; bfloat16 only where the model allows."
    )
    batch_size: int = Field(default=256, ge=1, description="Rows per forward call.")
    season_length: int = Field(
        default=1, ge=1, description="Seasonal period for statistical experts (12 = monthly)."
    )


@dataclass(frozen=True)
class ExpertCapabilities:
    """What generic code may rely on; plain attributes, read by the router and the cache."""

    max_context: int | None
    """Longest context the model uses; longer contexts are truncated on the left."""
    min_context: int
    """Shortest context the model accepts; shorter ones are left-padded with a mask."""
    native_horizon: int | None
    """Steps produced by one forward pass; longer horizons go autoregressive."""
    quantile_levels: tuple[float, ...]
    """Subset of ``QUANTILE_LEVELS`` the model produces (empty: point forecasts only)."""
    handles_missing: bool
    """True when NaN in the context is passed to the model as a mask."""


@dataclass(frozen=True)
class ExpertForecast:
    """Output of one batched forecast call; shapes in the module docstring."""

    point: torch.Tensor  # (B, H)
    quantiles: torch.Tensor | None  # (B, H, Q) or None


@runtime_checkable
class Expert(Protocol):
    """A frozen forecaster. ``forecast`` is pure: same input, same output, input untouched."""

    name: str
    capabilities: ExpertCapabilities

    @property
    def cache_key(self) -> str:
        """Identifies the exact model: name, checkpoint, revision and output-relevant settings."""
        ...

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """Forecast ``horizon`` steps for each row of ``context`` ``(B, L)``."""
        ...


@runtime_checkable
class SeasonAware(Protocol):
    """An expert whose forecasts depend on the season length (the statistical experts).

    ``with_season_length(m)`` returns the same model configured for period ``m``; its
    ``cache_key`` names ``m``, so cached forecasts of one season are never read for another.
    """

    def with_season_length(self, season_length: int) -> Expert:
        """This expert for seasonal period ``season_length`` (>= 1)."""
        ...


def for_season(expert: Expert, season_length: int) -> Expert:
    """``expert`` configured for ``season_length``; experts without a season pass through."""
    if isinstance(expert, SeasonAware):
        return expert.with_season_length(season_length)
    return expert


@runtime_checkable
class LegacyKeyed(Protocol):
    """An expert whose ``cache_key`` an older version of this code spelled differently.

    ``legacy_cache_keys`` are the keys under which older versions stored this exact model's
    forecasts; the cache reads rows stored under them as its own, so a store filled before a
    spelling change keeps its hits (Time-MoE's local-directory label was ``sha256-...`` until
    2026-12, ``sha256:...`` since). New rows are always written under ``cache_key``.
    """

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        """Older spellings of ``cache_key`` for the same model (may be empty)."""
        ...


def legacy_cache_keys(expert: Expert) -> tuple[str, ...]:
    """``expert.legacy_cache_keys`` where the expert has them, else ``()``."""
    return tuple(expert.legacy_cache_keys) if isinstance(expert, LegacyKeyed) else ()


class ExpertLoadError(RuntimeError):
    """Weights for an expert could not be found or loaded; the message says how to fix it."""


class MissingExtraError(ImportError):
    """An expert's optional library is not installed; the message names the extra."""

    def __init__(self, expert: str, extra: str, module: str) -> None:
        super().__init__(
            f"expert {expert!r} needs the Python package {module!r}; "
            f"install it with: pip install -e '.[{extra}]'"
        )


def torch_dtype(name: str, supported: tuple[str, ...], expert: str, hint: str = "") -> torch.dtype:
    """``TORCH_DTYPES[name]`` for an adapter that runs only in the ``supported`` dtypes.

    Raises ``ValueError`` naming the expert, the supported names and the given one (plus
    ``hint``, e.g. what to use instead).
    """
    if name not in supported:
        raise ValueError(f"{expert} dtype must be one of {sorted(supported)}, got {name!r}{hint}")
    return TORCH_DTYPES[name]
