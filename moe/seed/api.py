"""The seed's two entry points, ``train_and_save`` and ``predict_from_model``.

Both are thin shells over the steps the retrain runs (``pipeline.retrain``), minus the
store: the same window maker (``moe.data.rolling_windows`` + ``observed_windows``), the same
per-series season (``moe.seasonality.season_length_of``: forced, else ``freq``, else
detected), the same resolver (``moe.experts.registry.resolve_experts``), the same per-season
expert runs (``moe.precompute.forecast_all``), the same validated fit
(``moe.selection.fit_gate``) and the same packaging (``moe.model_file.build_artifact``).
Only the expert cache differs: here it is the in-memory tensor, there the store. Trained
experts named in the pool (``global_mlp``, ``global_trees``) are trained by the retrain's
own step (``moe.experts.trained.train_pool_experts``) on every point of the file's series,
and saved under ``experts/`` beside the model file.

Windows (``WindowConfig.windowing``; training settings are ``TrainConfig``):

* ``"rolling"`` (default): rolling origins stepping back from each series' end by
  ``stride`` (default ``pred_length``), at most ``max_windows_per_series`` per series, each
  with at least ``min_context`` points before its target (default: the smaller of 36 and
  ``input_length``, and for a series too short for a window with that, what it has, at
  least 8 points and two seasons: ``moe.data.series_min_context``, as ``moe retrain``;
  shorter contexts are NaN-padded on the left). The newest window of every series that has
  two or more windows is held out for validation (a temporal split, as the retrain's; with
  ``moe.selection.VALIDATION_FOLDS`` > 1 the validated fit also holds out next-older
  windows in further folds), and so is the only window of a seeded fifth of the series
  that have one (``moe.data.validation_windows``); when that leaves no training or no
  validation window, a seeded random ``val_fraction`` of the windows is held out instead.
* ``"seed"``: the seed's one window per series (``TimeSeriesDataset``: ``seq[:L]`` ->
  ``seq[L:L+H]``), validated on a seeded random ``val_fraction``.

Short series at prediction: a series shorter than ``input_length`` is NaN-padded on the left
when the model was trained on such windows (it has at least the ``min_context`` recorded in
``train_config["windows"]``, by ``train_and_save`` and by ``moe retrain``); shorter than that
it raises ``ValueError`` (``"seed"`` windowing records ``input_length``; a model file from
before the record counts as full windows). ``NaN`` inside the last
``input_length`` points is passed on as "missing" (experts mask it; the gate sees 0 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from moe.artifact import ArtifactError, GateArtifact, load_artifact, save_artifact
from moe.data import (
    Windows,
    default_min_context,
    left_padded,
    observed_windows,
    rolling_windows,
    series_min_context,
    shortest_context,
    validation_windows,
)
from moe.experts.base import Expert, ExpertConfig
from moe.experts.registry import TRAINED_EXPERTS, build_expert, check_pool, resolve_experts
from moe.experts.trained import GlobalExpertConfig, train_pool_experts
from moe.intervals import floor_nonnegative
from moe.model_file import build_artifact, load_router
from moe.precompute import experts_for_season, forecast_all
from moe.seasonality import season_length_of
from moe.seed.data import read_records
from moe.training import TrainConfig, WindowConfig, train_gate

__all__ = ["make_windows", "window_min_context", "train_and_save", "predict_from_model"]


def _seed_windows(
    sequences: Sequence[Sequence[float]], input_length: int, pred_length: int
) -> Windows:
    """The seed's one window per series (``TimeSeriesDataset``'s pairs), as ``Windows``."""
    need = input_length + pred_length
    kept = [index for index, seq in enumerate(sequences) if len(seq) >= need]
    values = [np.asarray(sequences[index][:need], np.float32) for index in kept]
    stacked = np.stack(values) if values else np.empty((0, need), np.float32)
    return Windows(
        context=stacked[:, :input_length],
        target=stacked[:, input_length:],
        series_index=np.asarray(kept, np.int64),
        origin=np.full(len(kept), input_length, np.int64),
        is_holdout=np.zeros(len(kept), bool),
    )


def window_min_context(config: WindowConfig, input_length: int) -> int:
    """Fewest points before a window's target under ``config`` (``input_length`` for the
    seed's full windows; raises ``ValueError`` when ``config.min_context > input_length``)."""
    if config.windowing == "seed":
        return input_length
    return default_min_context(input_length, config.min_context)


def make_windows(
    sequences: Sequence[Sequence[float]],
    freqs: Sequence[str | None],
    input_length: int,
    pred_length: int,
    config: WindowConfig,
    season_length: int | None = None,
    seed: int = 0,
) -> tuple[Windows, torch.Tensor | None]:
    """Usable windows with each window's season, and a validation mask ``(N,)`` or None.

    ``windows.season_length`` ``(N,)``: ``season_length`` when given, else the series'
    ``freq``, else detected from the series. Under the default ``min_context`` a series too
    short for a window at 36 points gets one with fewer (``moe.data.series_min_context``,
    as ``moe retrain``). The mask (``moe.data.validation_windows``, seeded by ``seed``) is
    None when it leaves no training or no validation window (see the module docstring).
    """
    shortest = window_min_context(config, input_length)
    seasons = np.asarray(
        [
            season_length_of(freq, seq, season_length)
            for freq, seq in zip(freqs, sequences, strict=True)
        ],
        np.int64,
    )
    if config.windowing == "seed":
        windows = _seed_windows(sequences, input_length, pred_length)
    else:
        min_context: int | np.ndarray = shortest
        if config.min_context is None:
            min_context = series_min_context(
                [len(seq) for seq in sequences],
                seasons,
                pred_length,
                stride=config.stride or pred_length,
                windows=1,
                most=shortest,
            )
            shortest = int(min_context.min(initial=shortest))
        windows = rolling_windows(
            sequences,
            input_length,
            pred_length,
            stride=config.stride,
            max_windows_per_series=config.max_windows_per_series,
            holdout=0,
            min_context=min_context,
        )
        windows = replace(
            windows, is_holdout=validation_windows(windows.series_index, windows.origin, seed=seed)
        )
    windows = observed_windows(replace(windows, season_length=seasons[windows.series_index]))
    if len(windows) == 0:
        longest = max((len(seq) for seq in sequences), default=0)
        raise ValueError(
            f"no usable windows: need series of at least min_context + pred_length = "
            f"{shortest} + {pred_length} points, the longest has {longest}"
        )
    validation = windows.is_holdout
    mask = None if not validation.any() or validation.all() else torch.from_numpy(validation)
    return replace(windows, is_holdout=np.zeros(len(windows), bool)), mask


def _random_validation(n_windows: int, config: TrainConfig) -> torch.Tensor:
    """``(N,)`` bool: a seeded random ``val_fraction`` of the windows (at least one)."""
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n_windows, generator=generator)
    validation = torch.zeros(n_windows, dtype=torch.bool)
    validation[order[: max(1, round(n_windows * config.val_fraction))]] = True
    return validation


def _trained_min_context(train_config: dict[str, object], input_length: int) -> int:
    """The fewest points the model's training windows had before their target: the
    ``min_context`` that ``train_and_save`` and ``moe retrain`` record, else
    ``input_length`` (full windows)."""
    windows = train_config.get("windows")
    recorded = windows.get("min_context") if isinstance(windows, dict) else None
    if isinstance(recorded, int) and 1 <= recorded <= input_length:
        return recorded
    return input_length


def _commonest(seasons: np.ndarray) -> int:
    values, counts = np.unique(seasons, return_counts=True)
    return int(values[np.argmax(counts)]) if values.size else 1


def _trained_pool(
    experts: Literal["auto"] | Sequence[str | Expert] | None, expert_config: ExpertConfig
) -> list[str]:
    """``experts`` as names when they name a trained expert (``global_mlp``,
    ``global_trees``) that this run trains, else ``[]`` (``expert_config.checkpoint``
    builds a saved one; a list that mixes objects and names is built as given)."""
    if experts is None or experts == "auto" or expert_config.checkpoint:
        return []
    names = [e for e in experts if isinstance(e, str)]
    if len(names) != len(experts) or not set(names) & set(TRAINED_EXPERTS):
        return []
    check_pool(names)
    return names


def _pool_forecasts(
    experts: Sequence[Expert],
    out_of_fold: dict[str, np.ndarray],
    context: torch.Tensor,
    pred_length: int,
    config: ExpertConfig,
    device: str,
    seasons: np.ndarray,
) -> torch.Tensor:
    """``(N, E, H)``: each trained expert's cross-fitted forecasts (every window here: the
    seed path has no backtest windows, as in ``moe retrain`` the gate learns the trained
    expert's out-of-sample error), every other expert run on the windows."""
    others = [expert for expert in experts if expert.name not in out_of_fold]
    run, _ = forecast_all(others, context, pred_length, config.batch_size, device, seasons)
    columns = iter(run.unbind(dim=1))
    return torch.stack(
        [
            torch.from_numpy(out_of_fold[e.name]) if e.name in out_of_fold else next(columns)
            for e in experts
        ],
        dim=1,
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
    global_expert: GlobalExpertConfig | None = None,
) -> GateArtifact:
    """Train a gate on ``jsonl_path`` and write it to ``save_path`` (the seed's entry point).

    Args:
        jsonl_path: lines of ``{"sequence": [...]}`` (optional ``freq`` gives the season).
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
        season_length: one season for every series; None: per series, from its ``freq``,
            else detected from its values (as ``moe retrain`` does).
        windows: how windows are cut (``WindowConfig()``; kept in ``train_config["windows"]``).
        global_expert: how named trained experts (``global_mlp``, ``global_trees``) are
            trained (``GlobalExpertConfig()``, as ``moe retrain``'s ``global_expert``). Each
            is trained on every point of every line, saved as
            ``<save_path's folder>/experts/<name>-<fingerprint>.pt`` (the model file names
            it), and cross-fitted for the gate's windows; an ``expert_config.checkpoint``
            builds a saved one instead.

    Returns:
        The saved artifact (weights, metrics, provenance).
    """
    fit_mode = gate_fit or ("fixed" if config is not None else "validated")
    config = config or TrainConfig()
    window_config = windows or WindowConfig()
    sequences, freqs = read_records(jsonl_path)
    cut, validation = make_windows(
        sequences, freqs, input_length, pred_length, window_config, season_length, config.seed
    )
    assert cut.season_length is not None  # make_windows always sets it
    # Per-series seasons: the experts are built non-seasonal (or with the forced season) and
    # each window's period is applied where they run, as in the retrain.
    expert_config = (expert_config or ExpertConfig()).model_copy(
        update={"season_length": season_length or 1}
    )
    from_names = experts is None or experts == "auto" or all(isinstance(e, str) for e in experts)
    names = _trained_pool(experts, expert_config)
    out_of_fold: dict[str, np.ndarray] = {}
    if names:
        trained = train_pool_experts(
            names,
            [
                build_expert(name, expert_config.model_copy(update={"device": str(device)}))
                for name in names
                if name not in TRAINED_EXPERTS
            ],
            [np.asarray(seq, np.float32) for seq in sequences],
            cut,
            global_expert or GlobalExpertConfig(),
            config.seed,
            Path(save_path).parent / "experts",
            expert_config.model_copy(update={"device": str(device)}),
        )
        built, out_of_fold = trained.experts, trained.out_of_fold
    else:
        built = resolve_experts(experts, device, expert_config)
    context = torch.from_numpy(cut.context)
    target = torch.from_numpy(cut.target)
    points = _pool_forecasts(
        built, out_of_fold, context, pred_length, expert_config, device, cut.season_length
    )
    selection = None
    if fit_mode == "validated":
        from moe.selection import VALIDATION_FOLDS, fit_gate  # lazy: keeps the import light

        if validation is None:  # seed windowing or one window per series: a seeded split
            validation = _random_validation(len(cut), config)
        fit = fit_gate(
            context,
            target,
            points,
            validation_mask=validation,
            season_length=torch.from_numpy(cut.season_length),
            series_index=cut.series_index,
            origin=cut.origin,
            folds=VALIDATION_FOLDS,
            seed=config.seed,
        )
        result, selection = fit.result, fit.summary()
    else:
        fixed = config.model_copy(update={"season_length": _commonest(cut.season_length)})
        result = train_gate(context, target, points, fixed, validation_mask=validation)
    artifact = build_artifact(
        result, built, context, target, points, expert_config if from_names else None
    )
    artifact = replace(artifact, season={"mode": "per_series", "forced": season_length})
    # The resolved min_context, not None: predict_from_model reads it to accept short series.
    artifact.train_config["windows"] = {
        **window_config.model_dump(),
        "min_context": (
            input_length
            if window_config.windowing == "seed"
            else shortest_context(input_length, window_config.min_context)
        ),
    }
    if selection is not None:
        artifact.metrics["selection"] = selection
    save_artifact(artifact, save_path)
    return artifact


def predict_from_model(
    model_path: str | Path,
    series: Sequence[float] | np.ndarray | torch.Tensor,
    input_length: int,
    device: str = "cpu",
    verbose: bool = False,
    *,
    experts: Sequence[Expert] | None = None,
    freq: str | None = None,
) -> torch.Tensor:
    """Forecast one series from its last ``input_length`` points -> ``(1, pred_length)`` (CPU).

    ``input_length`` must equal the model's. ``verbose=True`` prints the two chosen experts
    and their weights. A series shorter than ``input_length`` is NaN-padded on the left if
    it has at least the model's recorded ``min_context`` points (see the module docstring),
    else raises ``ValueError``. A model trained with per-series seasons takes this series'
    season from ``freq`` (else detected from ``series``), as the batch forecast does; a
    context that is never negative gets no negative forecast (``floor_nonnegative``), as
    in the forecasts table.
    """
    artifact = load_artifact(model_path)
    if input_length != artifact.input_length:
        raise ArtifactError(
            f"model file {str(model_path)!r} was trained with input_length="
            f"{artifact.input_length}, got input_length={input_length}"
        )
    values = torch.as_tensor(np.asarray(series, dtype=np.float32)).reshape(-1)
    shortest = _trained_min_context(artifact.train_config, input_length)
    if values.shape[0] < shortest:
        needs = "min_context" if shortest < input_length else "input_length"
        raise ValueError(
            f"series has {values.shape[0]} points; the model needs at least {needs}={shortest}"
        )
    # Trained experts' checkpoints: experts/ beside the model file (where train_and_save
    # puts them), so a model folder moved as a whole keeps working.
    beside = [Path(model_path).parent / "experts"]
    router = load_router(artifact, device, experts, checkpoint_dirs=beside)
    if artifact.season.get("mode") == "per_series":
        season = season_length_of(freq, values.numpy(), artifact.season.get("forced"))
        router.experts = experts_for_season(router.experts, season)
    with torch.no_grad():
        context = left_padded(values.numpy()[-input_length:], input_length)[None, :]  # (1, L)
        output = router.route(torch.from_numpy(context))  # (1, L) -> (1, H)
    point = floor_nonnegative(output.point.cpu().numpy(), context)
    if verbose:
        print(output.routing.format())
    return torch.from_numpy(point)
