"""Load a registered model for use, verified: the one way forecasting code gets an artifact.

Checks, in order: the registry row is valid (``storage.registry`` validates rows when read);
the file is a regular file inside ``<store>/models`` with the registered sha256 (read once,
so it cannot change between check and use); the artifact is internally consistent and
bounded (``moe.artifact.validate_artifact``, run by ``load_artifact`` before any gate is
built); and the registry row agrees with the file on lengths, experts and gate kind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from moe.artifact import ArtifactError, GateArtifact, load_artifact
from storage.registry import ModelVersion, read_verified_artifact
from storage.store import Store

__all__ = ["load_verified_artifact"]


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
