"""Fracast-0 expert through the ``fracast`` package, whose wheel bundles its pretrained weights.

What fracast is: a compact (85 k parameters) zero-shot forecaster, released on PyPI with its
trained checkpoints inside the wheel (``fracast/weights/``: ``config.json`` plus fp32 and
int8 ``safetensors``), so it forecasts for real with no download. A causal dilated
convolution is reused over a geometric ladder of scales on one context stream of
``W = 2048`` points (shorter contexts are left-padded and masked); a quantile head predicts
48 steps at levels 0.1, 0.2, ..., 0.9. Longer horizons go autoregressive on the median, in
blocks of 48 (fracast's own loop). Each row is min-max normalised on its observed values.

Weights: ``ExpertConfig.checkpoint`` None uses the bundled checkpoint; a local directory
holding the same files also works (hub ids are refused: nothing downloads). We load the
fp32 file; ``w8`` is the same network with int8-rounded weights, only smaller on disk.
``revision`` is not supported (fracast cannot pin one).

Output layout (``moe.experts.base``): levels 0.1..0.9 fill their ``QUANTILE_LEVELS`` slots,
0.05 and 0.95 are ``NaN``; ``point`` is the 0.5 quantile. The head does not guarantee
ordered quantiles, so they are sorted per step (the median slot is sorted too).

Missing values: fracast masks ``NaN`` itself (``handles_missing``). It needs at least
:data:`MIN_OBSERVED` observed points per row; a row with fewer (e.g. the seed's
``input_length=4``) gets a persistence forecast (its last observed value) and ``NaN``
quantiles. A row with no observation gets ``NaN`` everywhere.

Speed: the network always runs on 2048 positions, so a row costs the same whatever the
context length; about 5-10 rows/s on one CPU core, much faster on a GPU
(``ExpertConfig.device``). It runs in float32 whatever ``ExpertConfig.dtype`` says.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from moe.experts._loading import check_inputs, fingerprint, import_extra
from moe.experts.base import (
    QUANTILE_LEVELS,
    ExpertCapabilities,
    ExpertConfig,
    ExpertForecast,
    ExpertLoadError,
)

if TYPE_CHECKING:
    from fracast import FracastModel

__all__ = ["MIN_OBSERVED", "FracastForecaster", "build"]

_log = logging.getLogger(__name__)
_NAME = "fracast"
_WEIGHTS = "fp32"
_WEIGHT_FILES = ("config.json", "model.safetensors")

#: Fewest observed points fracast accepts in a row (its own check).
MIN_OBSERVED = 8

#: Bumped whenever the short-row or quantile policy above changes.
POLICY_VERSION = 1


class FracastForecaster:
    """A loaded, frozen Fracast-0 model behind the ``Expert`` protocol."""

    name = _NAME

    def __init__(self, model: FracastModel, *, identity: str, batch_size: int = 256) -> None:
        """Wrap an already loaded ``FracastModel`` (``build`` is the normal way in).

        Args:
            model: the fracast model, already on its device.
            identity: ``bundled``/``local`` and the weights' content hash; part of ``cache_key``.
            batch_size: rows per forward call.
        """
        if batch_size < 1:
            raise ValueError(f"fracast batch_size must be >= 1, got {batch_size}")
        self.model = model
        model.core.requires_grad_(False)
        model.head.requires_grad_(False)
        import fracast

        self._version = fracast.__version__
        self._identity = identity
        self._batch_size = batch_size
        levels = tuple(round(q, 6) for q in model.quantiles)
        missing = [q for q in levels if q not in QUANTILE_LEVELS]
        if missing or 0.5 not in levels:
            raise ExpertLoadError(
                f"fracast quantile levels {levels} must include 0.5 and be a subset of "
                f"QUANTILE_LEVELS {QUANTILE_LEVELS}; not in it: {missing}"
            )
        self._slots = [QUANTILE_LEVELS.index(q) for q in levels]  # model level -> our slot
        self._median = levels.index(0.5)
        self.capabilities = ExpertCapabilities(
            max_context=model.context_length,
            min_context=MIN_OBSERVED,
            native_horizon=model.horizon,
            quantile_levels=levels,
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        """``fracast|fracast==<version>|<identity>|weights=fp32|policy=<n>``."""
        return (
            f"{_NAME}|fracast=={self._version}|{self._identity}"
            f"|weights={_WEIGHTS}|policy={POLICY_VERSION}"
        )

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """``context`` ``(B, L)`` -> ``point`` ``(B, H)``, ``quantiles`` ``(B, H, Q)``."""
        check_inputs(context, horizon, _NAME)
        # A float32 copy on the CPU (fracast takes numpy); the caller's tensor is untouched.
        rows = np.array(context.detach().to("cpu", torch.float32).numpy(), copy=True)  # (B, L)
        batch = rows.shape[0]
        observed = ~np.isnan(rows[:, -self.model.context_length :])
        counts = observed.sum(axis=1)  # (B,)
        point = np.full((batch, horizon), np.nan, np.float32)  # (B, H)
        quantiles = np.full((batch, horizon, len(QUANTILE_LEVELS)), np.nan, np.float32)
        model_rows = np.flatnonzero(counts >= MIN_OBSERVED)
        for start in range(0, model_rows.size, self._batch_size):
            chunk = model_rows[start : start + self._batch_size]
            levels = self.model.forecast_batch(rows[chunk], horizon=horizon)  # (b, H, 9)
            levels = np.sort(levels, axis=-1)  # the head may cross quantiles
            quantiles[chunk[:, None, None], np.arange(horizon)[:, None], self._slots] = levels
            point[chunk] = levels[:, :, self._median]
        short_rows = np.flatnonzero((counts > 0) & (counts < MIN_OBSERVED))
        for index in short_rows:  # persistence: the last observed value
            point[index] = rows[index][~np.isnan(rows[index])][-1]
        return ExpertForecast(
            point=torch.from_numpy(point).to(context.device),
            quantiles=torch.from_numpy(quantiles).to(context.device),
        )


def build(config: ExpertConfig) -> FracastForecaster:
    """Load Fracast-0 (bundled weights unless ``config.checkpoint`` names others)."""
    fracast = import_extra("fracast", expert=_NAME, extra="fracast", package="fracast")
    if config.revision is not None:
        raise ExpertLoadError(
            f"fracast cannot pin a hub revision (got revision={config.revision!r}); "
            "use the bundled weights (checkpoint=None) or a local directory"
        )
    if config.dtype != "float32":
        _log.info("fracast runs in float32; ignoring dtype=%s", config.dtype)
    if config.checkpoint is None:
        package = Path(str(fracast.__file__)).resolve().parent
        directory, kind = package / "weights", "bundled"
    else:
        directory, kind = Path(config.checkpoint).expanduser(), "local"
        if not directory.is_dir():
            raise ExpertLoadError(
                f"fracast checkpoint must be None (the weights bundled with the package) or a "
                f"local directory holding {', '.join(_WEIGHT_FILES)}; got {config.checkpoint!r}"
            )
    try:
        model = fracast.FracastModel.from_pretrained(
            directory, weights=_WEIGHTS, device=config.device
        )
        # sha256 (12 hex) over the config and the fp32 weights loaded; part of the cache key
        identity = f"{kind}@{fingerprint([directory / f for f in _WEIGHT_FILES], digits=12)}"
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise ExpertLoadError(
            f"fracast weights could not be loaded from {directory}: {type(error).__name__}: "
            f"{error}. Use checkpoint=None for the bundled weights, or a directory holding "
            f"{', '.join(_WEIGHT_FILES)}"
        ) from error
    return FracastForecaster(model, identity=identity, batch_size=config.batch_size)
