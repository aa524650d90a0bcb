"""The seed's two entry points, ``train_and_save`` and ``predict_from_model``, and helpers.

``train_and_save`` reads a JSONL file, cuts windows, runs every expert once per window
(``moe.precompute.forecast_all``), trains the gate on that ``(N, E, H)`` tensor and writes
the ``.pt`` artifact. ``predict_from_model`` loads the artifact, rebuilds its experts and
forecasts the last ``input_length`` points of one series.

Windows (``WindowConfig.windowing``; training settings are ``TrainConfig``):

* ``"rolling"`` (default): rolling origins stepping back from each series' end by
  ``stride`` (default ``pred_length``), at most ``max_windows_per_series`` per series. The
  newest window of every series that has two or more windows is held out for validation
  (a temporal split); when that leaves no training or no validation window, a seeded random
  ``val_fraction`` of the windows is held out instead.
* ``"seed"``: the seed's one window per series (``TimeSeriesDataset``: ``seq[:L]`` ->
  ``seq[L:L+H]``), validated on a seeded random ``val_fraction``.

Windows whose context or target has no observed value are dropped before the experts run.

Short series at prediction: a series shorter than ``input_length`` raises ``ValueError``
(no silent padding). ``NaN`` inside the last ``input_length`` points is passed on as
"missing" (experts mask it; the gate sees 0 there).
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from moe.artifact import (
    ArtifactError,
    GateArtifact,
    data_fingerprint,
    library_versions,
    load_artifact,
    save_artifact,
)
from moe.data import TimeSeriesDataset, load_jsonl, rolling_windows
from moe.experts.base import (
    QUANTILE_LEVELS,
    Expert,
    ExpertConfig,
    ExpertLoadError,
    MissingExtraError,
)
from moe.precompute import forecast_all
from moe.router import SEED_EXPERTS, MoERouter
from moe.seasonality import season_from_freq
from moe.training import TrainConfig, TrainResult, WindowConfig, train_gate

__all__ = [
    "OFFLINE_DEFAULT",
    "MissingExpertError",
    "resolve_experts",
    "make_windows",
    "build_artifact",
    "train_and_save",
    "season_from_freq",
    "DEFAULT_SEASON_LENGTH",
    "load_router",
    "predict_from_model",
]

_log = logging.getLogger(__name__)

#: Experts used by ``experts="auto"`` when the seed's foundation experts cannot load.
OFFLINE_DEFAULT: tuple[str, ...] = ("seasonal_naive", "autoets", "autotheta")


class MissingExpertError(ArtifactError):
    """An expert named in a model file cannot be built here; the message says which and why."""


def _build_named(names: Sequence[str], config: ExpertConfig) -> list[Expert]:
    from moe.experts.registry import build_expert  # lazy: keeps `import moe.api` light

    return [build_expert(name, config) for name in names]


def resolve_experts(
    experts: Literal["auto"] | Sequence[str | Expert] | None,
    device: str = "cpu",
    expert_config: ExpertConfig | None = None,
) -> list[Expert]:
    """Experts from names (registry), objects (passed through) or ``"auto"``.

    ``None`` means the seed's three foundation experts. ``"auto"`` tries those and, when any
    cannot load (weights not downloaded, library missing), falls back to ``OFFLINE_DEFAULT``
    and says so on stderr (never silently).
    """
    config = (expert_config or ExpertConfig()).model_copy(update={"device": str(device)})
    if experts == "auto":
        try:
            return _build_named(SEED_EXPERTS, config)
        except (ExpertLoadError, MissingExtraError) as error:
            print(
                f"foundation experts {', '.join(SEED_EXPERTS)} unavailable ({error}); "
                f"using offline experts {', '.join(OFFLINE_DEFAULT)}",
                file=sys.stderr,
            )
            return _build_named(OFFLINE_DEFAULT, config)
    chosen = SEED_EXPERTS if experts is None else experts
    built = [_build_named([item], config)[0] if isinstance(item, str) else item for item in chosen]
    names = [expert.name for expert in built]
    if len(built) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need at least two experts with distinct names, got {names}")
    return built


def make_windows(
    sequences: Sequence[Sequence[float]], input_length: int, pred_length: int, config: WindowConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``context`` ``(N, L)``, ``target`` ``(N, H)`` and a validation mask ``(N,)`` or None.

    See the module docstring for the two windowing modes and the validation split.
    """
    validation: np.ndarray | None = None
    if config.windowing == "seed":
        dataset = TimeSeriesDataset(sequences, input_length, pred_length)
        if len(dataset) == 0:
            context = np.empty((0, input_length), np.float32)
            target = np.empty((0, pred_length), np.float32)
        else:
            context = np.stack([pair[0].numpy() for pair in dataset.pairs])
            target = np.stack([pair[1].numpy() for pair in dataset.pairs])
    else:
        windows = rolling_windows(
            sequences,
            input_length,
            pred_length,
            stride=config.stride,
            max_windows_per_series=config.max_windows_per_series,
            holdout=1,
        )
        context, target = windows.context, windows.target
        per_series = np.bincount(windows.series_index, minlength=len(sequences))
        validation = windows.is_holdout & (per_series[windows.series_index] >= 2)
    usable = ~np.isnan(context).all(axis=1) & ~np.isnan(target).all(axis=1)
    if not usable.all():
        _log.info("dropping %d windows without observed context or target", int((~usable).sum()))
    context, target = context[usable], target[usable]
    if validation is not None:
        validation = validation[usable]
        if not validation.any() or validation.all():
            validation = None
    if context.shape[0] == 0:
        longest = max((len(seq) for seq in sequences), default=0)
        raise ValueError(
            f"no usable windows: need series of at least input_length + pred_length = "
            f"{input_length + pred_length} points, the longest has {longest}"
        )
    mask = None if validation is None else torch.from_numpy(validation)
    return torch.from_numpy(context.copy()), torch.from_numpy(target.copy()), mask


def build_artifact(
    result: TrainResult,
    experts: Sequence[Expert],
    context: torch.Tensor,
    target: torch.Tensor,
    points: torch.Tensor,
    expert_config: ExpertConfig | None = None,
) -> GateArtifact:
    """Package a trained gate with its provenance.

    ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``points`` ``(N, E, H)`` are the training
    data (fingerprinted). ``expert_config`` is how the (named) experts were built; None when
    they were passed as objects. The device is left out: it is chosen again at load time.
    """
    keys = [expert.name for expert in experts]
    config_dump = None if expert_config is None else expert_config.model_dump(exclude={"device"})
    history = [epoch.as_dict() for epoch in result.history]
    initial = None if result.initial is None else result.initial.as_dict()
    metrics = {
        "history": history,
        "initial": initial,
        "start_pair": None if result.start_pair is None else [keys[i] for i in result.start_pair],
        "n_train": result.n_train,
        "n_val": result.n_val,
        "final": history[-1] if history else initial,
        "expert_val_mae": None
        if result.expert_val_mae is None
        else dict(zip(keys, result.expert_val_mae, strict=True)),
        "units": "window scale (mean |context|)"
        if result.config.loss_scale == "window"
        else f"seasonal-naive MAE of the context (season {result.config.season_length})",
    }
    return GateArtifact(
        gating_state={k: v.detach().cpu() for k, v in result.gate.state_dict().items()},
        expert_keys=keys,
        input_length=int(context.shape[1]),
        pred_length=int(target.shape[1]),
        gate=dict(result.gate.hyperparameters()),
        experts=[
            {"name": expert.name, "cache_key": expert.cache_key, "config": config_dump}
            for expert in experts
        ],
        scaling={"method": result.config.scaling},
        quantile_levels=list(QUANTILE_LEVELS),
        train_config=result.config.model_dump(),
        metrics=metrics,
        data_fingerprint=data_fingerprint(context, target, points, keys),
        library_versions=library_versions(),
    )


def train_and_save(
    jsonl_path: str | Path,
    input_length: int,
    pred_length: int,
    save_path: str | Path,
    device: str = "cpu",
    *,
    experts: Literal["auto"] | Sequence[str | Expert] | None = None,
    config: TrainConfig | None = None,
    expert_config: ExpertConfig | None = None,
    gate_fit: Literal["validated", "fixed"] | None = None,
    season_length: int | None = None,
    windows: WindowConfig | None = None,
) -> GateArtifact:
    """Train a gate on ``jsonl_path`` and write it to ``save_path`` (the seed's entry point).

    Args:
        jsonl_path: lines of ``{"sequence": [...]}``.
        input_length: context length ``L`` the gate and experts see.
        pred_length: horizon ``H``.
        save_path: where the ``.pt`` goes (parent folders are created).
        device: where the experts run. The gate trains on ``config.device`` (default CPU:
            a gate step is ~50 tiny kernels, cheaper there than as GPU launches).
        experts: names, ``Expert`` objects, ``"auto"``, or None for the seed's three.
        config: training settings; ``TrainConfig()`` holds the seed's defaults.
        expert_config: checkpoint/revision/dtype/batch settings for named experts; its
            ``batch_size`` is also the rows per expert call over the windows.
        gate_fit: ``"validated"``: the production fit (``moe.selection.fit_gate``, the one
            ``moe retrain`` runs: candidates chosen on each series' newest window with a
            one-SE rule; ``config`` gives only the seed and ``val_fraction``); ``"fixed"``:
            train exactly ``config`` (the seed's hyperparameters by default). None: ``"fixed"``
            when a ``config`` is given, else ``"validated"``.
        season_length: season of the experts, the MASE-unit loss and the features; None:
            from the lines' ``freq`` (``season_from_freq``), else ``DEFAULT_SEASON_LENGTH``
            (the same default as ``moe retrain``).
        windows: how windows are cut (``WindowConfig()``; kept in ``train_config["windows"]``).

    Returns:
        The saved artifact (weights, metrics, provenance).
    """
    fit_mode = gate_fit or ("fixed" if config is not None else "validated")
    config = config or TrainConfig()
    windows = windows or WindowConfig()
    sequences = load_jsonl(jsonl_path)
    season = season_length if season_length is not None else _season_of_file(jsonl_path)
    expert_config = (expert_config or ExpertConfig()).model_copy(update={"season_length": season})
    context, target, validation = make_windows(sequences, input_length, pred_length, windows)
    built = resolve_experts(experts, device, expert_config)
    from_names = experts is None or experts == "auto" or all(isinstance(e, str) for e in experts)
    points, _ = forecast_all(built, context, pred_length, expert_config.batch_size, device)
    selection = None
    if fit_mode == "validated":
        from moe.selection import fit_gate  # lazy: keeps `import moe.api` light

        if validation is None:  # seed windowing or one window per series: a seeded split
            generator = torch.Generator().manual_seed(config.seed)
            order = torch.randperm(context.shape[0], generator=generator)
            validation = torch.zeros(context.shape[0], dtype=torch.bool)
            validation[order[: max(1, round(context.shape[0] * config.val_fraction))]] = True
        fit = fit_gate(
            context,
            target,
            points,
            validation_mask=validation,
            season_length=season,
            seed=config.seed,
        )
        result, selection = fit.result, fit.summary()
    else:
        fixed = config.model_copy(update={"season_length": season})
        result = train_gate(context, target, points, fixed, validation_mask=validation)
    artifact = build_artifact(
        result, built, context, target, points, expert_config if from_names else None
    )
    artifact.train_config["windows"] = windows.model_dump()
    if selection is not None:
        artifact.metrics["selection"] = selection
    save_artifact(artifact, save_path)
    return artifact


#: Season used when neither ``season_length`` nor a line's ``freq`` gives one (the same
#: default as ``moe retrain``'s ``RetrainConfig.season_length``).
DEFAULT_SEASON_LENGTH = 12


def _season_of_file(path: str | Path) -> int:
    """The commonest season over the file's ``freq`` fields, else ``DEFAULT_SEASON_LENGTH``."""
    import json
    from collections import Counter

    seasons: Counter[int] = Counter()
    with open(path, encoding="utf-8-sig") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                season = season_from_freq(record.get("freq") if isinstance(record, dict) else None)
                if season is not None:
                    seasons[season] += 1
    return seasons.most_common(1)[0][0] if seasons else DEFAULT_SEASON_LENGTH


def load_router(
    model: str | Path | GateArtifact,
    device: str = "cpu",
    experts: Sequence[Expert] | None = None,
) -> MoERouter:
    """A ready ``MoERouter`` from a model file (or loaded artifact), experts rebuilt.

    ``experts``: objects to use instead of building the artifact's experts; matched by name
    and put in the artifact's order. Raises ``MissingExpertError`` naming an expert that is
    absent or cannot be built, and warns when an expert's cache key differs from training.
    """
    artifact = model if isinstance(model, GateArtifact) else load_artifact(model)
    source = "model" if isinstance(model, GateArtifact) else f"model file {str(model)!r}"
    if experts is not None:
        by_name = {expert.name: expert for expert in experts}
        missing = [key for key in artifact.expert_keys if key not in by_name]
        if missing:
            raise MissingExpertError(
                f"{source} needs experts {artifact.expert_keys}; missing {missing} among the "
                f"given {sorted(by_name)}"
            )
        built = [by_name[key] for key in artifact.expert_keys]
    else:
        built = []
        for entry in artifact.experts:
            stored = entry.get("config") or {}
            config = ExpertConfig(**{**stored, "device": str(device)})
            try:
                built.extend(_build_named([entry["name"]], config))
            except (ValueError, ExpertLoadError, MissingExtraError) as error:
                raise MissingExpertError(
                    f"{source} needs expert {entry['name']!r} (cache key "
                    f"{entry.get('cache_key')!r}), which cannot be built here: {error}"
                ) from error
    for expert, entry in zip(built, artifact.experts, strict=True):
        if entry.get("cache_key") and expert.cache_key != entry["cache_key"]:
            warnings.warn(
                f"{source}: expert {expert.name!r} is {expert.cache_key!r} here but was "
                f"{entry['cache_key']!r} when the gate was trained",
                stacklevel=2,
            )
    router = MoERouter(
        artifact.input_length,
        artifact.pred_length,
        device,
        experts=built,
        gate=artifact.gate["kind"],
        scaling=artifact.scaling["method"],
        gate_width=int(artifact.gate.get("width", 32)),
        gate_heads=int(artifact.gate.get("heads", 4)),
        gate_spec=dict(artifact.gate),
    )
    router.gating.load_state_dict(artifact.gating_state)
    return router.eval()


def predict_from_model(
    model_path: str | Path,
    series: Sequence[float] | np.ndarray | torch.Tensor,
    input_length: int,
    device: str = "cpu",
    verbose: bool = False,
    *,
    experts: Sequence[Expert] | None = None,
) -> torch.Tensor:
    """Forecast one series from its last ``input_length`` points -> ``(1, pred_length)`` (CPU).

    ``input_length`` must equal the model's. ``verbose=True`` prints the two chosen experts
    and their weights. A series shorter than ``input_length`` raises ``ValueError``.
    """
    artifact = load_artifact(model_path)
    if input_length != artifact.input_length:
        raise ArtifactError(
            f"model file {str(model_path)!r} was trained with input_length="
            f"{artifact.input_length}, got input_length={input_length}"
        )
    values = torch.as_tensor(np.asarray(series, dtype=np.float32)).reshape(-1)
    if values.shape[0] < input_length:
        raise ValueError(
            f"series has {values.shape[0]} points; the model needs at least "
            f"input_length={input_length}"
        )
    router = load_router(artifact, device, experts)
    with torch.no_grad():
        output = router.route(values[-input_length:][None, :])  # (1, L) -> (1, H)
    if verbose:
        print(output.routing.format())
    return output.point.cpu()
