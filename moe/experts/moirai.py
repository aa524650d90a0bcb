"""Moirai-MoE expert through uni2ts (``timecopilot-uni2ts``): ``MoiraiMoEModule``.

Weights, in the order they are looked for:

1. ``ExpertConfig.checkpoint``: a local directory written by ``save_pretrained`` or a hub id;
2. the environment variable ``MOE_MOIRAI_CHECKPOINT`` (same forms; read in ``build``);
3. :data:`DEFAULT_CHECKPOINT`, ``Salesforce/moirai-moe-1.0-R-small`` (``-base`` also works).

``ExpertConfig.revision`` pins a hub commit or tag. With ``HF_HUB_OFFLINE=1`` only the local
hub cache is searched. Nothing is ever replaced by other weights: a miss raises
:class:`~moe.experts.base.ExpertLoadError` saying where it looked and how to provide them.

Output layout (see ``moe.experts.base``): Moirai-MoE predicts a mixture distribution per
patch (16 steps). Each row gets :data:`NUM_SAMPLES` sample paths; ``quantiles[b, h, q]`` is
the empirical ``QUANTILE_LEVELS[q]`` quantile of those paths (linear interpolation, every
level filled) and ``point`` is the sample median, i.e. ``quantiles[..., 5]`` (level 0.5).

How a batch is forecast (the library's own steps, on a whole ``(B, L)`` tensor, without the
GluonTS pipeline):

* contexts longer than :data:`MAX_CONTEXT` keep their last ``MAX_CONTEXT`` points;
* ``NaN`` inside the context is an unobserved point (observed mask 0, so it is left out of the
  scaling); the patch embedding still reads a value there, so it is filled with the mean of
  the observed points before it (close to GluonTS' ``CausalMeanValueImputation`` that uni2ts'
  predictor uses; raw NaN would poison the scaler); leading ``NaN`` counts as padding;
* rows are left-padded with masked zeros to a multiple of the patch size, so any context of
  at least one observed point works; fully padded patches are left out of attention and
  scaling exactly as uni2ts does for short series;
* the model is decoder-only: the last context patch's output is the next patch's
  distribution. Horizons beyond one patch go autoregressive the uni2ts way: each sample
  path's patch is appended as observed data and the model runs again on every path
  (``B * NUM_SAMPLES`` sequences per step, so long horizons cost ``NUM_SAMPLES`` times more).

Device, dtype and batch size come from ``ExpertConfig``: each chunk of ``batch_size`` rows is
copied to the device once and its quantiles come back in one copy; nothing is copied per row.

Sampling is deterministic and independent of batching: every row draws from the default
generator re-seeded with ``seed + step`` (the caller's RNG state is restored afterwards), so
a row gives the same forecast alone or in any batch. With ``dtype="bfloat16"`` the network
runs under autocast; the distribution parameters are taken back to float32 before sampling.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from moe.experts._loading import (
    WeightsSpec,
    check_inputs,
    check_observed_rows,
    import_extra,
    load_weights,
)
from moe.experts._moirai_tokens import Tokens, append, fields, repeat, tokenize
from moe.experts.base import (
    QUANTILE_LEVELS,
    TORCH_DTYPES,
    ExpertCapabilities,
    ExpertConfig,
    ExpertForecast,
    torch_dtype,
)

if TYPE_CHECKING:
    from uni2ts.model.moirai_moe import MoiraiMoEModule

__all__ = [
    "CHECKPOINT_ENV_VAR",
    "DEFAULT_CHECKPOINT",
    "MAX_CONTEXT",
    "NUM_SAMPLES",
    "MoiraiForecaster",
    "build",
]

DEFAULT_CHECKPOINT = "Salesforce/moirai-moe-1.0-R-small"
CHECKPOINT_ENV_VAR = "MOE_MOIRAI_CHECKPOINT"
#: Longest context used. Pretraining sequences hold at most 512 patches (8192 steps); 4096
#: steps (256 patches) leave room for horizons up to ~4096 steps inside that length.
MAX_CONTEXT = 4096
#: Sample paths per row, as uni2ts' ``MoiraiMoEForecast`` default.
NUM_SAMPLES = 100
#: Largest number of tokens (sequences x patches) in one forward call; bounds memory of the
#: autoregressive steps to ~0.2 GB per activation at d_model 384 in float32.
TOKENS_PER_CALL = 1 << 17

_NAME = "moirai"
_DISPLAY = "Moirai"  # in input errors; load, dtype and device errors say "Moirai-MoE"
_WEIGHT_FILES = ("config.json", "model.safetensors")
_SUPPORTED_DTYPES = ("float32", "bfloat16")
_MEDIAN = QUANTILE_LEVELS.index(0.5)
_WEIGHTS = WeightsSpec(
    expert="Moirai-MoE",
    env_var=CHECKPOINT_ENV_VAR,
    default_checkpoint=DEFAULT_CHECKPOINT,
    hub_patterns=_WEIGHT_FILES,
    required=_WEIGHT_FILES,
    layout="config.json and model.safetensors (as MoiraiMoEModule.save_pretrained writes them)",
    content_files=lambda directory: [directory / f for f in _WEIGHT_FILES],
    dtypes=_SUPPORTED_DTYPES,  # the module runs in float32, bfloat16 under autocast
    dtype_hint=" (float16 is not supported; use bfloat16 on GPUs)",
)


class MoiraiForecaster:
    """A loaded, frozen Moirai-MoE module behind the ``Expert`` protocol."""

    name = _NAME

    def __init__(
        self,
        module: MoiraiMoEModule,
        *,
        identity: str,
        dtype: str = "float32",
        batch_size: int = 256,
        num_samples: int = NUM_SAMPLES,
        seed: int = 0,
        max_context: int = MAX_CONTEXT,
    ) -> None:
        """Wrap an already loaded module (``build`` is the normal way in).

        Args:
            module: the uni2ts module, already on its device (float32 weights).
            identity: checkpoint and revision/content hash; part of ``cache_key``.
            dtype: compute dtype name (``float32`` or ``bfloat16`` autocast); part of ``cache_key``.
            batch_size: series rows per chunk; autoregressive steps run ``NUM_SAMPLES`` paths
                per row, split so one forward call holds at most ``TOKENS_PER_CALL`` tokens.
            num_samples: sample paths per row.
            seed: seed of the sampling generator (re-seeded per row and step).
            max_context: longest context used; longer ones keep their last points.
        """
        torch_dtype(dtype, _SUPPORTED_DTYPES, "Moirai")
        if num_samples < 1 or batch_size < 1:
            raise ValueError(
                f"Moirai num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}"
            )
        self.module = module.eval().requires_grad_(False)
        self._identity = identity
        self._dtype = dtype
        self._batch_size = batch_size
        self._num_samples = num_samples
        self._seed = seed
        self._patch = int(max(module.patch_sizes))
        self._max_tokens = int(module.max_seq_len)
        self._max_context = max_context
        self._lock = threading.Lock()  # forward hooks are set per call: one call at a time
        self.capabilities = ExpertCapabilities(
            max_context=max_context,
            min_context=self._patch,
            native_horizon=self._patch,
            quantile_levels=QUANTILE_LEVELS,
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        """``moirai|<checkpoint>@<commit or sha256>|<dtype>|samples=..|seed=..|context=..``."""
        return (
            f"{_NAME}|{self._identity}|{self._dtype}|samples={self._num_samples}"
            f"|seed={self._seed}|context={self._max_context}"
        )

    @property
    def device(self) -> torch.device:
        """Device the module's weights live on."""
        return next(self.module.parameters()).device

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """Forecast ``horizon`` steps for each row of ``context`` ``(B, L)`` (NaN = missing).

        Returns point ``(B, H)`` (sample median) and quantiles ``(B, H, Q)`` on the context's
        device.
        """
        check_inputs(context, horizon, _DISPLAY)
        context = context[:, -self._max_context :]  # a view: the caller's tensor is never written
        check_observed_rows(context, _DISPLAY, f" in their last {context.shape[1]} steps")
        self._check_horizon(context.shape[1], horizon)
        batch = context.shape[0]
        if batch == 0:
            empty = torch.empty(0, horizon, device=context.device)
            levels = torch.empty(0, horizon, len(QUANTILE_LEVELS), device=context.device)
            return ExpertForecast(point=empty, quantiles=levels)
        quantiles = []
        with self._lock, torch.no_grad():
            for start in range(0, batch, self._batch_size):
                rows = context[start : start + self._batch_size]
                rows = rows.to(device=self.device, dtype=torch.float32)  # one copy per chunk
                samples = self._sample_paths(rows, horizon)  # (b, S, H)
                levels = torch.tensor(QUANTILE_LEVELS, device=samples.device)
                quantiles.append(torch.quantile(samples, levels, dim=1).permute(1, 2, 0))
        quantile = torch.cat(quantiles).to(context.device)  # (B, H, Q)
        return ExpertForecast(point=quantile[..., _MEDIAN].contiguous(), quantiles=quantile)

    def _check_horizon(self, length: int, horizon: int) -> None:
        """Context plus forecast patches must fit the module's ``max_seq_len``."""
        needed = math.ceil(length / self._patch) + math.ceil(horizon / self._patch) - 1
        if needed > self._max_tokens:
            raise ValueError(
                f"Moirai horizon {horizon} with a {length}-step context needs {needed} patches;"
                f" the model holds at most max_seq_len={self._max_tokens}"
            )

    def _sample_paths(self, rows: torch.Tensor, horizon: int) -> torch.Tensor:
        """Rows ``(b, L)`` float32 on the module's device -> sample paths ``(b, S, H)``."""
        tokens = tokenize(rows, self._patch)
        n_rows, n_samples = rows.shape[0], self._num_samples
        params, loc, scale = self._next_patch_params(tokens)
        paths = self._draw(params, loc, scale, step=0, sample_shape=(n_samples,))  # (b*S, P)
        paths = paths.view(n_rows, n_samples, 1, self._patch)
        steps = math.ceil(horizon / self._patch)
        context = repeat(tokens, n_samples) if steps > 1 else tokens  # (b*S, T, P)
        last_time = tokens.time_id.max(dim=1).values.repeat_interleave(n_samples)  # (b*S,)
        for step in range(1, steps):
            extended = append(context, paths.flatten(0, 1), last_time)
            params, loc, scale = self._next_patch_params(extended)
            patch = self._draw(params, loc, scale, step=step, sample_shape=())  # (b*S, P)
            paths = torch.cat([paths, patch.view(n_rows, n_samples, 1, self._patch)], dim=2)
        return paths.flatten(2)[..., :horizon]

    def _next_patch_params(self, tokens: Tokens) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Distribution of the patch after each sequence's last one.

        Returns the parameter pytree (leaves ``(n, P, ...)``, float32) and loc, scale ``(n, 1)``.
        """
        n, length = tokens.sample_id.shape
        per_call = max(1, TOKENS_PER_CALL // length)
        chunks = [
            self._forward_last(Tokens(*(t[i : i + per_call] for t in fields(tokens))))
            for i in range(0, n, per_call)
        ]
        if len(chunks) == 1:
            return chunks[0]
        params = _tree_cat([c[0] for c in chunks])
        return params, torch.cat([c[1] for c in chunks]), torch.cat([c[2] for c in chunks])

    def _forward_last(self, tokens: Tokens) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """One ``MoiraiMoEModule.forward``; keeps only the last patch's distribution parameters."""
        captured: list[Any] = []

        def keep_last(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            captured.append(_tree_map(lambda t: t[:, -1].float(), output))

        zeros = torch.zeros_like(tokens.sample_id)
        handle = self.module.param_proj.register_forward_hook(keep_last)
        device_type = tokens.target.device.type
        try:
            with torch.autocast(
                device_type, dtype=TORCH_DTYPES[self._dtype], enabled=self._dtype != "float32"
            ):
                distribution = self.module(
                    tokens.target,  # P is the largest patch size: no padding to it needed
                    tokens.observed,
                    tokens.sample_id,
                    tokens.time_id,
                    zeros,  # variate_id: univariate
                    zeros.bool(),  # prediction_mask: nothing masked, only real tokens are sent
                    torch.full_like(tokens.sample_id, self._patch),
                )
        finally:
            handle.remove()
        loc = distribution.loc[:, -1].float()  # (n, 1)
        scale = distribution.scale[:, -1].float()
        return captured[0], loc, scale

    def _draw(
        self,
        params: Any,
        loc: torch.Tensor,
        scale: torch.Tensor,
        *,
        step: int,
        sample_shape: tuple[int, ...],
    ) -> torch.Tensor:
        """Sample each row from a generator seeded ``seed + step``, so batching changes nothing.

        ``params`` leaves are ``(n, P, ...)``; a row is one sequence when ``sample_shape`` is
        ``(S,)`` (first step) and ``S`` consecutive sequences when it is ``()``. Returns
        ``(n * S, P)`` for the first step and ``(n, P)`` afterwards.
        """
        per_row = 1 if sample_shape else self._num_samples
        n_rows = loc.shape[0] // per_row
        output = self.module.distr_output
        draws = []
        with _restored_rng(loc.device) as generator:
            for row in range(n_rows):
                part = slice(row * per_row, (row + 1) * per_row)
                distribution = output.distribution(
                    _tree_map(lambda t, p=part: t[p], params),
                    loc=loc[part],
                    scale=scale[part],
                    validate_args=False,  # validation would sync with the device per row
                )
                generator.manual_seed(self._seed + step)
                draws.append(distribution.sample(torch.Size(sample_shape)).reshape(-1, self._patch))
        return torch.cat(draws)


def build(config: ExpertConfig) -> MoiraiForecaster:
    """Load Moirai-MoE as configured (checkpoint, revision, device, dtype, batch size)."""
    library = import_extra(
        "uni2ts.model.moirai_moe", expert=_NAME, extra="moirai", package="uni2ts"
    )

    def load(directory: Path, _dtype: torch.dtype) -> MoiraiMoEModule:
        # float32 weights whatever the dtype: bfloat16 runs under autocast (module docstring)
        return library.MoiraiMoEModule.from_pretrained(str(directory), strict=True)

    module, source = load_weights(_WEIGHTS, config, load)
    return MoiraiForecaster(
        module, identity=source.identity, dtype=config.dtype, batch_size=config.batch_size
    )


def _tree_map(function: Any, tree: Any) -> Any:
    """Apply ``function`` to every tensor of a dict/list pytree (uni2ts parameter trees)."""
    if isinstance(tree, torch.Tensor):
        return function(tree)
    if isinstance(tree, dict):
        return {key: _tree_map(function, value) for key, value in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_tree_map(function, value) for value in tree)
    return tree


def _tree_cat(trees: list[Any]) -> Any:
    """Concatenate same-shaped pytrees along dim 0."""
    first = trees[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(trees)
    if isinstance(first, dict):
        return {key: _tree_cat([tree[key] for tree in trees]) for key in first}
    if isinstance(first, list | tuple):
        return type(first)(_tree_cat(list(parts)) for parts in zip(*trees, strict=True))
    return first


@contextmanager
def _restored_rng(device: torch.device) -> Iterator[torch.Generator]:
    """The default generator of ``device``; its state is restored on exit."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            yield torch.cuda.default_generators[index]
    else:
        with torch.random.fork_rng(devices=[]):
            yield torch.default_generator
