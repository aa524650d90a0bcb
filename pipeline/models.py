"""Load a registered model for use, verified: the one way forecasting code gets an artifact.

Checks, in order: the registry row is valid (``storage.registry`` validates rows when read);
the file is a regular file inside ``<store>/models`` with the registered sha256 (read once,
so it cannot change between check and use); the artifact is internally consistent and
bounded (``moe.artifact.validate_artifact``, run by ``load_artifact`` before any gate is
built); and the registry row agrees with the file on lengths, experts and gate kind.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from moe.artifact import ArtifactError, GateArtifact, load_artifact
from moe.experts.base import Expert
from moe.experts.registry import TRAINED_EXPERTS
from moe.model_file import load_router, verify_checkpoints
from moe.router import MoERouter
from storage.registry import ModelVersion, read_verified_artifact
from storage.store import Store

__all__ = ["check_registered_checkpoints", "load_verified_artifact", "registered_router"]

#: A checkpoint file name the retrain writes: ``<expert>-<fingerprint>.pt``, no folders.
_CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.pt")


def load_verified_artifact(store: Store, model: ModelVersion) -> GateArtifact:
    """The artifact of registered ``model``; ``RegistryError``/``ArtifactError`` say why not."""
    content = read_verified_artifact(store, model)
    with tempfile.TemporaryDirectory(prefix="moe-model-") as folder:
        private = Path(folder) / f"{model.model_version}.pt"
        private.write_bytes(content)  # load exactly the bytes that were hashed
        try:
            artifact = load_artifact(private)
        except ArtifactError as error:
            message = str(error).replace(str(private), model.artifact_path)
            raise ArtifactError(message) from error
    registered = (model.input_length, model.pred_length, list(model.expert_keys), model.gate_kind)
    in_file = (
        artifact.input_length,
        artifact.pred_length,
        list(artifact.expert_keys),
        str(artifact.gate.get("kind")),
    )
    if registered != in_file:
        raise ArtifactError(
            f"model {model.model_version}: the registry says (input_length, pred_length, "
            f"expert_keys, gate) = {registered} but its file says {in_file}; "
            "promote another version (moe models list)"
        )
    return artifact


def _checkpoint_names(artifact: GateArtifact) -> list[str]:
    """File names of the trained experts' checkpoints the artifact records (checked, so a
    name can never reach outside the folder it is looked up in)."""
    names = []
    for entry in artifact.experts:
        recorded = (entry.get("config") or {}).get("checkpoint")
        if entry.get("name") in TRAINED_EXPERTS and isinstance(recorded, str):
            name = recorded.replace("\\", "/").rsplit("/", 1)[-1]
            if not _CHECKPOINT_NAME.fullmatch(name):
                raise ArtifactError(
                    f"model: expert {entry.get('name')!r} names checkpoint {recorded!r}, "
                    "which is not a checkpoint file name the retrain writes"
                )
            names.append(name)
    return names


@contextmanager
def _staged_checkpoints(store: Store, artifact: GateArtifact) -> Iterator[list[Path]]:
    """Folders to look up the artifact's trained checkpoints in: a local store's
    ``experts/``; for an ``s3://`` store, a private folder holding copies of those under
    ``<prefix>/experts/`` (removed on exit, once the experts are built in memory)."""
    names = _checkpoint_names(artifact)
    if not store.remote or not names:
        yield [] if store.remote else [store.root / "experts"]
        return
    with tempfile.TemporaryDirectory(prefix="moe-experts-", dir=store.scratch_dir()) as folder:
        for name in names:
            try:
                content = store.fs.cat_file(store.locate("experts", name))
            except FileNotFoundError:
                continue  # load_router names every place it looked
            (Path(folder) / name).write_bytes(bytes(content))
        yield [Path(folder)]


def registered_router(
    store: Store,
    artifact: GateArtifact,
    device: str = "cpu",
    experts: Sequence[Expert] | None = None,
) -> MoERouter:
    """The router of a registered model's (verified) ``artifact``, its experts built here
    unless given; trained experts come from the store's ``experts/`` (where the retrain
    saved them, so a store moved or copied as a whole keeps working), checked against the
    SHA-256 the model file recorded."""
    if experts is not None:
        return load_router(artifact, device, experts=experts)
    with _staged_checkpoints(store, artifact) as folders:
        return load_router(artifact, device, checkpoint_dirs=folders)


def check_registered_checkpoints(store: Store, artifact: GateArtifact) -> None:
    """Raise ``MissingExpertError`` (an ``ArtifactError``) when a trained expert's checkpoint
    that ``registered_router`` would need is missing or changed since training; builds no
    expert, so it is cheap enough to run before a forecast job starts."""
    with _staged_checkpoints(store, artifact) as folders:
        verify_checkpoints(artifact, checkpoint_dirs=folders)
