"""Time-MoE expert: decoder-only mixture-of-experts transformer, point forecasts only.

Weights
    ``ExpertConfig.checkpoint`` is a hub id or a local directory (``config.json`` plus
    ``model.safetensors``). When it is ``None`` the environment variable
    ``MOE_TIMEMOE_CHECKPOINT`` (read at ``build()``, never at import) supplies it, and
    otherwise ``DEFAULT_CHECKPOINT`` (``Maple728/TimeMoE-50M``). ``ExpertConfig.revision``
    pins a hub revision (ignored for local directories). With ``HF_HUB_OFFLINE=1`` only
    the local Hugging Face cache is searched; hub loads fetch only ``*.json`` and
    ``*.safetensors`` (never the hub's remote code). Weights that cannot be found, or that
    do not match the architecture, raise ``ExpertLoadError`` saying where we looked and
    how to provide them; nothing ever falls back to other (or random) weights. The cache
    key names the resolved hub commit, or a content hash of a local directory
    (``sha256:...``; the key older versions spelled ``sha256-...`` is ``legacy_cache_keys``).

Library
    transformers 5 has no Time-MoE class and the hub's remote code targets transformers
    4.40, so the architecture comes from ``sktime.libs.timemoe`` (same parameter names as
    the hub checkpoints, loaded without ``trust_remote_code``). Its ``generate()`` and its
    KV cache are broken on transformers 5, so this adapter rolls out autoregressively
    itself over ``forward(use_cache=False)``: each step asks the model for
    ``max_horizon_length=remaining``, which selects the largest output head that fits
    (TimeMoE-50M heads: 1, 8, 32, 64), and appends the prediction to the input. The
    attention mask comes from ``moe.experts._timemoe_mask``, not from the private
    transformers helper sktime calls (removed in transformers 5.24).

Preprocessing (per row, in this order)
    * Longer than ``max_context`` (the checkpoint's ``max_position_embeddings``, 4096 for
      the released models, the longest sequence Time-MoE was trained on): the oldest
      values are dropped. The rollout window is kept at ``max_context`` the same way.
    * Missing values (``NaN``). Time-MoE has no missing-value input, but its attention
      takes a padding mask. Leading ``NaN`` (a series shorter than the window) become
      masked left padding with positions counted from the first observation, so the row
      is forecast exactly as if it had been passed without them. Interior gaps are
      filled by linear interpolation between the neighbouring observations and trailing
      gaps by carrying the last observation forward: Time-MoE was pretrained on gap-free
      sequences, and masking an interior token would show it a pattern it never saw,
      while interpolation keeps the local level and slope the model conditions on.
      Hence ``capabilities.handles_missing`` is ``False``. A row with no observation at
      all, or with an infinite value, is rejected with ``ValueError``.
    * Short contexts need no padding: tokens are single points (no patches), so any
      length >= 1 works (``min_context == 1``).
    * Normalisation as in Time-MoE's reference usage: per row, subtract the mean and
      divide by the (unbiased) standard deviation of the observed context values; the
      forecast is mapped back. A row with fewer than two observations or a (numerically)
      constant row uses a scale of 1.

Execution
    The model lives on ``config.device`` in ``config.dtype`` (bfloat16 is fine for
    Time-MoE; its RMSNorm and softmax upcast to float32). Each chunk of
    ``config.batch_size`` rows is moved to the device once, forecast there, and the
    result is returned as float32 on the context's device. Chunks are further capped so
    that one layer's eager attention scores (rows x heads x T x T float32) stay under
    ``ATTENTION_BUDGET_BYTES``; this only bites for long contexts. On CPU results are
    bitwise deterministic; on CUDA the MoE scatter (``index_add_``) may differ in the
    last bits between runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moe.experts import _timemoe_mask
from moe.experts._loading import (
    WeightsSpec,
    check_inputs,
    check_observed_rows,
    from_pretrained_strict,
    import_extra,
    load_weights,
)
from moe.experts.base import (
    TORCH_DTYPES,
    ExpertCapabilities,
    ExpertConfig,
    ExpertForecast,
    ExpertLoadError,
)
from moe.gaps import fill_gaps

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ATTENTION_BUDGET_BYTES",
    "CHECKPOINT_ENV_VAR",
    "DEFAULT_CHECKPOINT",
    "TimeMoEForecaster",
    "build",
]

#: Hub id used when neither the config nor ``CHECKPOINT_ENV_VAR`` names a checkpoint.
DEFAULT_CHECKPOINT = "Maple728/TimeMoE-50M"
#: Environment variable that overrides ``DEFAULT_CHECKPOINT`` (hub id or local directory).
CHECKPOINT_ENV_VAR = "MOE_TIMEMOE_CHECKPOINT"
#: Longest context Time-MoE was trained on; checkpoints with a smaller position table cap it.
_TIMEMOE_MAX_CONTEXT = 4096
#: Upper bound on one layer's eager attention scores per forward call, in bytes.
ATTENTION_BUDGET_BYTES = 4 * 2**30

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def _content_files(directory: Path) -> list[Path]:
    """Config and weight files of a local checkpoint, sorted; their names and bytes label it."""
    return sorted(
        p for p in directory.iterdir() if p.name == "config.json" or p.suffix in _WEIGHT_SUFFIXES
    )


# No required files: transformers names what a directory lacks when it loads it.
_WEIGHTS = WeightsSpec(
    expert="Time-MoE",
    env_var=CHECKPOINT_ENV_VAR,
    default_checkpoint=DEFAULT_CHECKPOINT,
    hub_patterns=("*.json", "*.safetensors"),  # never the hub's remote code
    required=(),
    layout="config.json and model.safetensors",
    content_files=_content_files,
    hash_names=True,
    # Until 2026-12 this adapter spelled the label "sha256-"; stores keep those cache rows
    legacy_prefixes=("sha256-",),
)


class TimeMoEForecaster:
    """A loaded Time-MoE model behind the ``Expert`` protocol (see the module docstring)."""

    name = "timemoe"

    def __init__(
        self,
        model: nn.Module,
        checkpoint: str,
        revision: str,
        config: ExpertConfig,
        *,
        revision_aliases: tuple[str, ...] = (),
    ):
        """Wrap an already loaded ``TimeMoeForPrediction``; use ``build()`` to load one.

        Args:
            model: ``sktime.libs.timemoe.TimeMoeForPrediction`` with ``input_size == 1``.
            checkpoint: What was loaded (hub id or absolute directory), for the cache key.
            revision: Resolved revision (hub commit) or content hash of a local directory.
            config: Device, dtype and batch size to run with.
            revision_aliases: Labels older versions gave ``revision`` (``legacy_cache_keys``).
        """
        model_config: Any = model.config
        if model_config.input_size != 1:
            raise ExpertLoadError(
                f"Time-MoE checkpoint {checkpoint!r} has input_size={model_config.input_size}; "
                "this expert forecasts univariate series and needs input_size=1"
            )
        try:  # sktime's call to a vanished transformers helper (see _timemoe_mask)
            _timemoe_mask.install(model)
        except RuntimeError as exc:
            raise ExpertLoadError(str(exc)) from exc
        self._device = torch.device(config.device)
        self._dtype = TORCH_DTYPES[config.dtype]
        self._model = model.to(device=self._device, dtype=self._dtype).eval()
        self._model.requires_grad_(False)
        self._batch_size = config.batch_size
        self._num_heads = int(model_config.num_attention_heads)
        self._checkpoint = checkpoint
        self._revision = revision
        self._revision_aliases = revision_aliases
        max_context = min(_TIMEMOE_MAX_CONTEXT, int(model_config.max_position_embeddings))
        self.capabilities = ExpertCapabilities(
            max_context=max_context,
            min_context=1,
            native_horizon=max(int(h) for h in model_config.horizon_lengths),
            quantile_levels=(),
            handles_missing=False,
        )

    @property
    def cache_key(self) -> str:
        """``timemoe|<checkpoint>|<revision>|<dtype>|ctx<max_context>``."""
        return self._key(self._revision)

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        """The keys older versions wrote for this model (a local directory's ``sha256-`` label)."""
        return tuple(self._key(alias) for alias in self._revision_aliases)

    def _key(self, revision: str) -> str:
        return (
            f"{self.name}|{self._checkpoint}|{revision}|{self._dtype}"
            f"|ctx{self.capabilities.max_context}"
        )

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """Forecast ``horizon`` steps for each row of ``context``.

        Args:
            context: ``(B, L)`` float, ``NaN`` = missing, most recent value last. Not modified.
            horizon: Steps to forecast, >= 1.

        Returns:
            ``ExpertForecast`` with ``point`` ``(B, horizon)`` float32 on the context's
            device and ``quantiles`` ``None``.
        """
        check_inputs(context, horizon, self.name)
        max_context = self.capabilities.max_context
        assert max_context is not None  # set in __init__
        window = context[:, -max_context:]  # a view; truncation as in the module docstring
        truncated = context.shape[1] > max_context
        where = f" in the last {window.shape[1]} columns (max_context)" if truncated else ""
        check_observed_rows(window, self.name, where)
        chunk = self._rows_per_call(window.shape[1] + horizon)
        points = [
            self._forecast_chunk(window[start : start + chunk], horizon)
            for start in range(0, window.shape[0], chunk)
        ]
        if points:
            point = torch.cat(points, dim=0)
        else:
            point = torch.empty(0, horizon, dtype=torch.float32, device=self._device)
        return ExpertForecast(point=point.to(context.device), quantiles=None)

    def _rows_per_call(self, sequence_length: int) -> int:
        """Rows per forward call: ``batch_size``, capped by the attention-memory budget."""
        window = min(sequence_length, self.capabilities.max_context or sequence_length)
        bytes_per_row = self._num_heads * window * window * 4
        return max(1, min(self._batch_size, ATTENTION_BUDGET_BYTES // bytes_per_row))

    @torch.no_grad()  # not inference_mode: callers may multiply the output by gate weights
    def _forecast_chunk(self, window: torch.Tensor, horizon: int) -> torch.Tensor:
        """One device round trip. ``window`` ``(b, T)`` -> point ``(b, horizon)`` on device."""
        max_context = self.capabilities.max_context
        assert max_context is not None
        values = window.to(device=self._device, dtype=torch.float32)  # never written to
        filled, observed = fill_gaps(values)  # (b, T), (b, T)
        mean, scale = _observed_mean_std(values, observed)  # (b, 1), (b, 1)
        started = observed.cumsum(dim=1) > 0  # (b, T) False = leading gap = left padding
        normalised = torch.where(started, (filled - mean) / scale, 0.0)
        predictions = _rollout(self._model, normalised, started, horizon, max_context, self._dtype)
        return predictions * scale + mean  # (b, horizon)


def build(config: ExpertConfig) -> TimeMoEForecaster:
    """Load Time-MoE weights as described in the module docstring and wrap them.

    Raises:
        MissingExtraError: ``sktime`` or ``transformers`` is not installed.
        ExpertLoadError: The weights cannot be found or do not match the architecture.
    """
    # transformers first: sktime imports it lazily and would hide its absence
    import_extra("transformers", expert="timemoe", extra="timemoe", package="transformers")
    library = import_extra(
        "sktime.libs.timemoe", expert="timemoe", extra="timemoe", package="sktime"
    )

    def load(directory: Path, dtype: torch.dtype) -> nn.Module:
        model = from_pretrained_strict(library.TimeMoeForPrediction, directory, dtype, _WEIGHTS)
        _restore_rotary_tables(model)
        return model

    model, source = load_weights(_WEIGHTS, config, load)
    return TimeMoEForecaster(
        model, source.checkpoint, source.revision, config, revision_aliases=source.aliases
    )


# --- loading -------------------------------------------------------------------------


def _restore_rotary_tables(model: nn.Module) -> None:
    """Recompute the RoPE tables (``inv_freq``, ``cos_cached``, ``sin_cached``).

    transformers 5 instantiates the model on the meta device before loading, so buffers
    that are not in the checkpoint (non-persistent) are left uninitialised; without this
    every forecast is garbage or NaN. The values are the module's own: standard RoPE
    frequencies ``base ** (-2i / dim)`` and the cos/sin cache over all positions.
    """
    restored = 0
    module: Any
    for module in model.modules():
        if not (hasattr(module, "inv_freq") and hasattr(module, "_set_cos_sin_cache")):
            continue
        device = module.inv_freq.device
        exponents = torch.arange(0, module.dim, 2, device=device).to(torch.float32) / module.dim
        module.inv_freq = 1.0 / (module.base**exponents)  # a registered buffer: stays one
        module._set_cos_sin_cache(
            seq_len=module.max_position_embeddings, device=device, dtype=torch.float32
        )
        restored += 1
    layers = getattr(model.config, "num_hidden_layers", None)
    if restored != layers or not all(torch.isfinite(b).all() for b in model.buffers()):
        raise ExpertLoadError(
            f"Time-MoE: rebuilt RoPE tables in {restored} of {layers} layers; this sktime "
            "version's Time-MoE layout is not supported (tested with sktime 1.2)"
        )


# --- forecasting math ----------------------------------------------------------------


def _observed_mean_std(
    values: torch.Tensor, observed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and unbiased std over observed values, ``(b, 1)`` each, float32.

    Computed in float64; a scale that is not finite or below ``1e-6 * (1 + |mean|)``
    (fewer than two observations, a constant row) becomes 1.
    """
    count = observed.sum(dim=1, keepdim=True).to(torch.float64)
    zeroed = torch.where(observed, values, 0.0).to(torch.float64)
    mean = zeroed.sum(dim=1, keepdim=True) / count
    squares = torch.where(observed, (values.to(torch.float64) - mean) ** 2, 0.0)
    std = (squares.sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    usable = (count > 1) & torch.isfinite(std) & (std > 1e-6 * (1 + mean.abs()))
    return mean.to(torch.float32), torch.where(usable, std, 1.0).to(torch.float32)


def _rollout(
    model: nn.Module,
    sequence: torch.Tensor,
    attend: torch.Tensor,
    horizon: int,
    max_context: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Autoregressive rollout over ``forward(use_cache=False)`` in normalised space.

    Args:
        model: ``TimeMoeForPrediction`` on the device of ``sequence``.
        sequence: ``(b, T)`` float32 normalised context, left padding set to 0.
        attend: ``(b, T)`` bool, False marks left padding.
        horizon: Steps to produce.
        max_context: Longest window fed to the model; older steps are dropped.
        dtype: Model compute dtype.

    Returns:
        ``(b, horizon)`` float32 normalised predictions.
    """
    steps: list[torch.Tensor] = []
    remaining = horizon
    while remaining > 0:
        sequence, attend = sequence[:, -max_context:], attend[:, -max_context:]
        first_used = int(attend.any(dim=0).to(torch.int8).argmax())  # drop all-padding columns
        sequence, attend = sequence[:, first_used:], attend[:, first_used:]
        if bool(attend.all()):
            mask, positions = None, None  # plain causal attention, positions 0..T-1
        else:
            mask = attend.to(torch.long)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        output = model(  # 3-D input: the model would unsqueeze a 2-D one in place
            input_ids=sequence.unsqueeze(-1).to(dtype),  # (b, T, 1)
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            return_dict=True,
            max_horizon_length=remaining,
        )
        step = output.logits[:, -1, :].to(torch.float32)  # (b, min(head, remaining))
        if step.shape[1] < 1 or step.shape[1] > remaining:
            raise RuntimeError(f"timemoe: head produced {step.shape[1]} steps for {remaining} left")
        steps.append(step)
        sequence = torch.cat([sequence, step], dim=1)
        attend = torch.cat([attend, torch.ones_like(step, dtype=torch.bool)], dim=1)
        remaining -= step.shape[1]
    return torch.cat(steps, dim=1)
