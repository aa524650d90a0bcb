"""A model file's two directions: a trained gate -> ``GateArtifact``, and back to a router.

``build_artifact`` packages a ``TrainResult`` with its provenance (experts, cache keys,
training data fingerprint, library versions); ``load_router`` rebuilds a ready
``MoERouter`` from a model file or artifact. The seed's ``train_and_save`` and
``predict_from_model``, the retrain and the forecast job all go through these two.
"""

from __future__ import annotations

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

__all__ = ["MissingExpertError", "build_artifact", "load_router"]


class MissingExpertError(ArtifactError):
    """An expert named in a model file cannot be built here; the message says which and why."""


def _entry(expert: Expert, config: dict[str, object] | None) -> dict[str, object]:
    """An expert's artifact entry; a trained expert's config points at its checkpoint, so
    the artifact rebuilds that very model."""
    checkpoint = getattr(expert, "checkpoint", None)
    if expert.name in TRAINED_EXPERTS and checkpoint:
        config = {**(config or {}), "checkpoint": checkpoint}
    return {"name": expert.name, "cache_key": expert.cache_key, "config": config}


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
                built.append(build_expert(entry["name"], config))
            except (ValueError, ExpertLoadError, MissingExtraError) as error:
                raise MissingExpertError(
                    f"{source} needs expert {entry['name']!r} (cache key "
                    f"{entry.get('cache_key')!r}), which cannot be built here: {error}"
                ) from error
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
