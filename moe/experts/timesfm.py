"""TimesFM 2.5 (200M) expert through transformers' native ``TimesFm2_5ModelForPrediction``.

Why this route and not the ``timesfm`` package: transformers' ``from_pretrained`` reports
missing and unexpected keys (refused below, so wrong weights never load silently); it is
the same transformers 5 the Time-MoE expert needs (one dependency, ``pip check`` clean);
the model takes a batched ``(B, L)`` tensor, so a whole batch stays on one device without
per-row copies; and the ``timesfm`` package's ``forecast()`` takes Python lists that it
pads in place (design.md, known traps) and reads only its own checkpoint layout.

Weights, in the order they are looked for:

1. ``ExpertConfig.checkpoint``: a local directory written by ``save_pretrained`` or a hub id;
2. the environment variable ``MOE_TIMESFM_CHECKPOINT`` (same forms; read in ``build``);
3. :data:`DEFAULT_CHECKPOINT`, ``google/timesfm-2.5-200m-transformers``: Google's
   transformers-format copy of ``google/timesfm-2.5-200m-pytorch`` (same weights; the
   ``-pytorch`` repository is laid out for the ``timesfm`` package and cannot be read here).

``ExpertConfig.revision`` pins a hub commit or tag. With ``HF_HUB_OFFLINE=1`` only the local
hub cache is searched. Nothing is ever replaced by other weights: a miss raises
:class:`~moe.experts.base.ExpertLoadError` saying where it looked and how to provide them.

Output layout (see ``moe.experts.base``): ``point`` is the model's point forecast, channel
``decode_index`` (5, the median) of its 10 output channels; channel 0 (the mean head) is
not used. Channels 1..9 are the deciles 0.1..0.9 and fill the matching columns of
``QUANTILE_LEVELS``; 0.05 and 0.95 have no head and are ``NaN``. Within the quantile head's
reach (``output_quantile_len``, 1024 steps) the deciles come from the continuous quantile
head, exactly as the library does; beyond it, from the point head's decile channels.

How a batch is forecast (the library's own steps, done on a whole ``(B, L)`` tensor):
contexts longer than ``context_length`` keep their last ``context_length`` points; each row
is normalised by the mean and standard deviation of its observed values; ``NaN`` becomes a
masked zero; rows are left-padded with masked zeros to a multiple of the patch length (so a
context of 4 points works); the series and its negation run as one batch and are averaged
(flip invariance); deciles are made non-decreasing outward from the median (the timesfm
package's ``fix_quantile_crossing``, which its README turns on; transformers has no such
step); rows whose observed values are all non-negative are clipped at zero.
Horizons beyond ``horizon_length`` (128) go autoregressive the TimesFM way: the median of
the last output block is appended to the context and the model runs again (the library's
KV-cached decode gives the same numbers; here the prefix is recomputed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from moe.experts._loading import (
    WeightsSpec,
    check_inputs,
    check_observed_rows,
    from_pretrained_strict,
    how_to_provide,
    import_extra,
    load_weights,
)
from moe.experts.base import (
    QUANTILE_LEVELS,
    ExpertCapabilities,
    ExpertConfig,
    ExpertForecast,
    ExpertLoadError,
)

if TYPE_CHECKING:
    from transformers import TimesFm2_5ModelForPrediction

__all__ = ["DEFAULT_CHECKPOINT", "CHECKPOINT_ENV_VAR", "TimesFMForecaster", "build"]

DEFAULT_CHECKPOINT = "google/timesfm-2.5-200m-transformers"
CHECKPOINT_ENV_VAR = "MOE_TIMESFM_CHECKPOINT"

_NAME = "timesfm"
_DISPLAY = "TimesFM"
_SUPPORTED_DTYPES = ("float32", "bfloat16")
_TOLERANCE = 1e-6  # the library's threshold below which a scale counts as zero


def _check_model_type(directory: Path) -> None:
    """Refuse a config that is not transformers' TimesFM 2.5 (e.g. the timesfm-package one)."""
    config_file = directory / "config.json"
    if '"timesfm2_5"' not in config_file.read_text(encoding="utf-8"):
        raise ExpertLoadError(
            f"{config_file} is not a transformers TimesFM 2.5 config (model_type 'timesfm2_5')."
            " The timesfm-package layout of google/timesfm-2.5-200m-pytorch is not read here;"
            f" use {DEFAULT_CHECKPOINT} (same weights). {how_to_provide(_WEIGHTS)}"
        )


_WEIGHTS = WeightsSpec(
    expert=_DISPLAY,
    env_var=CHECKPOINT_ENV_VAR,
    default_checkpoint=DEFAULT_CHECKPOINT,
    hub_patterns=("config.json", "*.safetensors", "*.safetensors.index.json"),
    required=("config.json", "*.safetensors"),
    layout="config.json and model.safetensors in the transformers layout",
    content_files=lambda directory: sorted(directory.glob("*.safetensors")),
    validate=_check_model_type,
    dtypes=_SUPPORTED_DTYPES,
    dtype_hint=" (float16 is not offered for TimesFM)",
)


class TimesFMForecaster:
    """A loaded, frozen TimesFM 2.5 model behind the ``Expert`` protocol."""

    name = _NAME

    def __init__(
        self,
        model: TimesFm2_5ModelForPrediction,
        *,
        identity: str,
        dtype: str = "float32",
        batch_size: int = 256,
    ) -> None:
        """Wrap an already loaded model (``build`` is the normal way in).

        Args:
            model: the transformers model, already on its device and in its dtype.
            identity: checkpoint and revision/content hash; part of ``cache_key``.
            dtype: the compute dtype name, part of ``cache_key``.
            batch_size: rows per forward call (the flip-invariant pass runs 2x this).
        """
        config = model.config
        if config.horizon_length % config.patch_length:
            raise ExpertLoadError(
                f"TimesFM config: horizon_length ({config.horizon_length}) must be a multiple of"
                f" patch_length ({config.patch_length}) for autoregressive decoding"
            )
        self.model = model.eval().requires_grad_(False)
        self._identity = identity
        self._dtype = dtype
        self._batch_size = batch_size
        self._patch = int(config.patch_length)
        self._max_context = int(config.context_length) // self._patch * self._patch
        self._block = int(config.horizon_length)
        self._quantile_len = int(config.output_quantile_len)
        self._n_channels = len(config.quantiles) + 1
        self._median = int(config.decode_index)
        self._flip = bool(config.force_flip_invariance)
        self._positive = bool(config.infer_is_positive)
        self._continuous = bool(config.use_continuous_quantile_head)
        # output column in QUANTILE_LEVELS -> model channel (1 + position in config.quantiles)
        self._columns, self._channels = _quantile_map(tuple(config.quantiles))
        self.capabilities = ExpertCapabilities(
            max_context=self._max_context,
            min_context=self._patch,
            native_horizon=self._block,
            quantile_levels=tuple(QUANTILE_LEVELS[c] for c in self._columns),
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        """``timesfm|<checkpoint>@<commit or sha256>|<dtype>``."""
        return f"{_NAME}|{self._identity}|{self._dtype}"

    @property
    def device(self) -> torch.device:
        """Device the model's weights live on."""
        return next(self.model.parameters()).device

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """Forecast ``horizon`` steps for each row of ``context`` ``(B, L)`` (NaN = missing).

        Returns point ``(B, H)`` and quantiles ``(B, H, Q)`` on the context's device.
        """
        check_inputs(context, horizon, _DISPLAY)
        check_observed_rows(context, _DISPLAY)
        batch = context.shape[0]
        n_levels = len(QUANTILE_LEVELS)
        if batch == 0:
            empty = torch.empty(0, horizon, device=context.device)
            return ExpertForecast(empty, torch.empty(0, horizon, n_levels, device=context.device))
        points, quantiles = [], []
        with torch.no_grad():
            for start in range(0, batch, self._batch_size):
                rows = context[start : start + self._batch_size]
                rows = rows.to(device=self.device, dtype=torch.float32)  # one copy per batch
                point, quantile = self._forecast_rows(rows, horizon)
                points.append(point)
                quantiles.append(quantile)
        point = torch.cat(points).to(context.device)
        quantile = torch.cat(quantiles).to(context.device)
        return ExpertForecast(point=point, quantiles=quantile)

    def _forecast_rows(self, rows: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: rows ``(b, L)`` float32 on the model's device -> ``(b, H)``, ``(b, H, Q)``."""
        rows = rows[:, -self._max_context :]
        observed = ~torch.isnan(rows)  # (b, L)
        count = observed.sum(dim=1, keepdim=True).to(rows.dtype)  # (b, 1)
        filled = torch.where(observed, rows, torch.zeros_like(rows))
        mean = filled.sum(dim=1, keepdim=True) / count  # (b, 1)
        centred = torch.where(observed, rows - mean, torch.zeros_like(rows))
        # unbiased, as the library's torch.std; a single observation has no spread
        std = (centred.pow(2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        safe_std = torch.where(std < _TOLERANCE, torch.ones_like(std), std)
        normed = centred / safe_std  # (b, L), 0 where missing
        positive = torch.where(observed, rows, torch.zeros_like(rows)).amin(dim=1) >= 0  # (b,)

        pad = -rows.shape[1] % self._patch
        values = torch.nn.functional.pad(normed, (pad, 0))  # (b, Lp)
        padding = torch.nn.functional.pad(~observed, (pad, 0), value=True)  # (b, Lp)
        if self._flip:
            values = torch.cat([values, -values])  # (2b, Lp)
            padding = torch.cat([padding, padding])

        blocks: list[torch.Tensor] = []
        spread: torch.Tensor | None = None
        while len(blocks) * self._block < horizon:
            block, block_spread = self._step(values, padding, with_spread=spread is None)
            spread = block_spread if spread is None else spread
            blocks.append(block)
            if len(blocks) * self._block < horizon:
                values = torch.cat([values, block[..., self._median]], dim=1)[
                    :, -self._max_context :
                ]
                padding = torch.nn.functional.pad(padding, (0, self._block), value=False)
                padding = padding[:, -self._max_context :]
        full = torch.cat(blocks, dim=1)[:, :horizon]  # (b or 2b, H, C)
        assert spread is not None

        if self._flip:
            half = rows.shape[0]
            full = (full[:half] - _flip_channels(full[half:])) / 2
            spread = (spread[:half] - _flip_channels(spread[half:])) / 2
        if self._continuous:
            reach = min(horizon, self._quantile_len)
            offsets = spread[:, :reach] - spread[:, :reach, self._median : self._median + 1]
            quantile_part = offsets + full[:, :reach, self._median : self._median + 1]
            keep = torch.zeros(self._n_channels, dtype=torch.bool, device=full.device)
            keep[0] = keep[self._median] = True  # mean and median keep the point head
            head = torch.where(keep, full[:, :reach], quantile_part)
            full = torch.cat([head, full[:, reach:]], dim=1)
        full = _fix_quantile_crossing(full, self._median)
        full = full * std[:, :, None] + mean[:, :, None]  # the library denormalises by raw std
        if self._positive:
            full = torch.where(positive[:, None, None], full.clamp(min=0), full)

        point = full[..., self._median].contiguous()  # (b, H)
        quantiles = full.new_full((*point.shape, len(QUANTILE_LEVELS)), float("nan"))
        quantiles[..., self._columns] = full[..., self._channels]
        return point, quantiles

    def _step(
        self, values: torch.Tensor, padding: torch.Tensor, *, with_spread: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One forward pass on ``(n, Lp)`` -> ``(n, block, C)`` and ``(n, quantile_len, C)``."""
        out = self.model.model(past_values=values, past_values_padding=padding.to(values.dtype))
        last = out.last_hidden_state[:, -1]  # (n, D): only the last patch's head is needed
        mu = out.context_mu[:, -1, None, None].float()  # (n, 1, 1)
        sigma = out.context_sigma[:, -1, None, None].float()
        n = values.shape[0]
        block = self.model.output_projection_point(last).float()
        block = block.view(n, self._block, self._n_channels) * sigma + mu
        if not with_spread:
            return block, None
        spread = self.model.output_projection_quantiles(last).float()
        spread = spread.view(n, self._quantile_len, self._n_channels) * sigma + mu
        return block, spread


def build(config: ExpertConfig) -> TimesFMForecaster:
    """Load TimesFM 2.5 as configured (checkpoint, revision, device, dtype, batch size)."""
    library = import_extra("transformers", expert=_NAME, extra="timesfm", package="transformers")

    def load(directory: Path, dtype: torch.dtype) -> TimesFm2_5ModelForPrediction:
        model_class = library.TimesFm2_5ModelForPrediction
        return from_pretrained_strict(model_class, directory, dtype, _WEIGHTS)

    model, source = load_weights(_WEIGHTS, config, load)
    return TimesFMForecaster(
        model, identity=source.identity, dtype=config.dtype, batch_size=config.batch_size
    )


def _quantile_map(levels: tuple[float, ...]) -> tuple[list[int], list[int]]:
    """Columns of ``QUANTILE_LEVELS`` and the model channels (1 + index) that fill them."""
    columns, channels = [], []
    for index, level in enumerate(levels):
        matches = [c for c, q in enumerate(QUANTILE_LEVELS) if abs(q - level) < 1e-9]
        if matches:
            columns.append(matches[0])
            channels.append(index + 1)
    return columns, channels


def _fix_quantile_crossing(outputs: torch.Tensor, median: int) -> torch.Tensor:
    """Make channels ``1..`` non-decreasing outward from the median (``fix_quantile_crossing``).

    ``outputs`` ``(b, H, C)``; channel 0 (the mean) is left alone.
    """
    below = outputs[..., 1 : median + 1].flip(-1).cummin(dim=-1).values.flip(-1)
    above = outputs[..., median:].cummax(dim=-1).values[..., 1:]
    return torch.cat([outputs[..., :1], below, above], dim=-1)


def _flip_channels(outputs: torch.Tensor) -> torch.Tensor:
    """Forecast of ``-x`` mapped to quantiles of ``x``: keep channel 0, reverse the rest."""
    return torch.cat([outputs[..., :1], outputs[..., 1:].flip(-1)], dim=-1)
