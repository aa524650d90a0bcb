"""A model file's two directions: a trained gate -> ``GateArtifact``, and back to a router.

``build_artifact`` packages a ``TrainResult`` with its provenance (experts, cache keys,
training data fingerprint, library versions); ``load_router`` rebuilds a ready
``MoERouter`` from a model file or artifact. The seed's ``train_and_save`` and
``predict_from_model``, the retrain and the forecast job all go through these two.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from moe.artifact import (
    ArtifactError,
    GateArtifact,
    data_fingerprint,
    library_versions,
    load_artifact,
)
from moe.experts.base import (
    QUANTILE_LEVELS,
    Expert,
    ExpertConfig,
    ExpertLoadError,
    MissingExtraError,
    legacy_cache_keys,
)
from moe.experts.registry import TRAINED_EXPERTS, build_expert
from moe.router import MoERouter
from moe.training import TrainResult

__all__ = ["MissingExpertError", "build_artifact", "load_router", "verify_checkpoints"]


class MissingExpertError(ArtifactError):
    """An expert named in a model file cannot be built here; the message says which and why."""


def _entry(expert: Expert, config: dict[str, object] | None) -> dict[str, object]:
    """An expert's artifact entry; a trained expert's config points at its checkpoint, and
    the entry records the checkpoint's SHA-256, so the artifact rebuilds that very model."""
    checkpoint = getattr(expert, "checkpoint", None)
    entry: dict[str, object] = {"name": expert.name, "cache_key": expert.cache_key}
    if expert.name in TRAINED_EXPERTS and checkpoint:
        config = {**(config or {}), "checkpoint": checkpoint}
        entry["checkpoint_sha256"] = getattr(expert, "checkpoint_sha256", None)
    return {**entry, "config": config}


def _checkpoint_candidates(
    recorded: str, model_path: Path | None, checkpoint_dirs: Sequence[Path]
) -> list[Path]:
    """Where a trained expert's checkpoint is looked for, in order: by its file name in
    ``checkpoint_dirs`` (a store's ``experts/``), where it was when the gate was trained,
    then by file name in ``experts/`` beside the model file and beside its folder (the
    seed's and the store's layouts), so a store or model folder moved as a whole works."""
    name = Path(recorded).name
    places = [Path(folder) / name for folder in checkpoint_dirs] + [Path(recorded)]
    if model_path is not None:
        beside = model_path.parent
        places += [beside / "experts" / name, beside.parent / "experts" / name]
    return list(dict.fromkeys(places))


def _locate_checkpoint(
    name: str,
    recorded: str,
    source: str,
    model_path: Path | None,
    checkpoint_dirs: Sequence[Path],
) -> Path:
    """The first of ``_checkpoint_candidates`` that is a file; ``MissingExpertError`` naming
    every place looked in when none is."""
    places = _checkpoint_candidates(recorded, model_path, checkpoint_dirs)
    found = next((place for place in places if place.is_file()), None)
    if found is None:
        raise MissingExpertError(
            f"{source} needs expert {name!r} from its checkpoint {Path(recorded).name!r}, "
            f"found in none of {[str(place) for place in places]}: copy the store's "
            "experts/ folder with it, or retrain"
        )
    return found


def _check_digest(
    name: str, source: str, path: object, expected: object, actual: str | None
) -> None:
    """Refuse a checkpoint whose SHA-256 is not the one recorded at training (None recorded:
    an artifact written before 2026-12-04, matched by cache key only)."""
    if expected is not None and actual != expected:
        raise MissingExpertError(
            f"{source} needs expert {name!r} from a checkpoint with sha256 {expected}, but "
            f"{str(path)!r} has sha256 {actual}: it changed after the gate was "
            "trained; restore it or retrain"
        )


def _build_entry(
    entry: dict[str, object],
    device: str,
    source: str,
    model_path: Path | None,
    checkpoint_dirs: Sequence[Path],
) -> Expert:
    """The expert of one artifact entry; a trained expert from its checkpoint, refused unless
    its bytes have the SHA-256 the entry recorded."""
    name = str(entry["name"])
    stored = dict(entry.get("config") or {})  # type: ignore[call-overload]
    recorded = stored.get("checkpoint")
    if name in TRAINED_EXPERTS and isinstance(recorded, str):
        stored["checkpoint"] = str(
            _locate_checkpoint(name, recorded, source, model_path, checkpoint_dirs)
        )
    try:
        expert = build_expert(name, ExpertConfig(**{**stored, "device": str(device)}))
    except (ValueError, ExpertLoadError, MissingExtraError) as error:
        raise MissingExpertError(
            f"{source} needs expert {name!r} (cache key {entry.get('cache_key')!r}), which "
            f"cannot be built here: {error}"
        ) from error
    if name in TRAINED_EXPERTS:
        actual = getattr(expert, "checkpoint_sha256", None)
        _check_digest(
            name, source, stored.get("checkpoint"), entry.get("checkpoint_sha256"), actual
        )
    return expert


def verify_checkpoints(
    artifact: GateArtifact,
    model_path: Path | None = None,
    checkpoint_dirs: Sequence[Path] = (),
) -> None:
    """Find and hash the trained experts' checkpoints the artifact needs, where
    ``load_router`` would look, without building any expert (a quick check before a forecast
    job starts); ``MissingExpertError`` as ``load_router`` would raise for a missing or
    changed one."""
    source = "model" if model_path is None else f"model file {str(model_path)!r}"
    for entry in artifact.experts:
        name = str(entry.get("name"))
        recorded = (entry.get("config") or {}).get("checkpoint")
        if name not in TRAINED_EXPERTS or not isinstance(recorded, str):
            continue
        path = _locate_checkpoint(name, recorded, source, model_path, checkpoint_dirs)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        _check_digest(name, source, path, entry.get("checkpoint_sha256"), digest)


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
        experts=[_entry(expert, config_dump) for expert in experts],
        scaling={"method": result.config.scaling},
        quantile_levels=list(QUANTILE_LEVELS),
        train_config=result.config.model_dump(),
        metrics=metrics,
        data_fingerprint=data_fingerprint(context, target, points, keys),
        library_versions=library_versions(),
    )


def load_router(
    model: str | Path | GateArtifact,
    device: str = "cpu",
    experts: Sequence[Expert] | None = None,
    checkpoint_dirs: Sequence[Path] = (),
) -> MoERouter:
    """A ready ``MoERouter`` from a model file (or loaded artifact), experts rebuilt.

    ``experts``: objects to use instead of building the artifact's experts; matched by name
    and put in the artifact's order. ``checkpoint_dirs``: folders searched first, by file
    name, for trained experts' checkpoints (see ``_checkpoint_candidates``). Raises
    ``MissingExpertError`` naming an expert that is absent, cannot be built or whose
    checkpoint changed, and warns when an expert's cache key differs from training.
    """
    artifact = model if isinstance(model, GateArtifact) else load_artifact(model)
    source = "model" if isinstance(model, GateArtifact) else f"model file {str(model)!r}"
    model_path = None if isinstance(model, GateArtifact) else Path(model)
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
        built = [
            _build_entry(entry, device, source, model_path, checkpoint_dirs)
            for entry in artifact.experts
        ]
    for expert, entry in zip(built, artifact.experts, strict=True):
        known = (expert.cache_key, *legacy_cache_keys(expert))  # same model, older spelling
        if entry.get("cache_key") and entry["cache_key"] not in known:
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
