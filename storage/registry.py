"""The model registry: versions (written once) and events (append-only).

Artifacts are copied into ``<store>/models/<version>.pt`` with their SHA-256, so the store
alone reproduces any forecast. The champion is the target of the most recent ``promoted``
or ``rolled_back`` event; every other version is archived and can be restored with
``promote`` (or ``rollback``, which restores the previous champion).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from storage.sql import query
from storage.store import Store

__all__ = [
    "ModelVersion",
    "RegistryError",
    "register_model",
    "record_event",
    "promote",
    "rollback",
    "champion",
    "list_models",
    "get_model",
    "file_sha256",
    "models_dir",
    "read_verified_artifact",
]

_VERSION = re.compile(r"^v\d{8}-\d{6}-[0-9a-f]{6}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STATUSES = frozenset({"champion", "archived"})


class RegistryError(LookupError):
    """An unknown version, or no champion where one is needed."""


@dataclass(frozen=True)
class ModelVersion:
    model_version: str
    artifact_path: str
    artifact_sha256: str
    gate_kind: str
    expert_keys: list[str]
    input_length: int
    pred_length: int
    backtest_mase: float | None
    status: str  # champion | archived
    last_event: str | None


def file_sha256(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def models_dir(store: Store) -> Path:
    """Where a local store's registered artifacts live: ``<store>/models``; nothing outside
    is ever loaded (an ``s3://`` store keeps them under ``<prefix>/models/``)."""
    return store.root / "models"


def _new_version() -> str:
    return datetime.now(UTC).strftime("v%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def register_model(
    store: Store,
    artifact: str | os.PathLike[str],
    *,
    gate_kind: str,
    expert_keys: Sequence[str],
    input_length: int,
    pred_length: int,
    train_windows: int,
    backtest_mase: float | None,
    metrics: dict[str, object],
) -> str:
    """Copy the artifact into the store, record the version; returns the version id."""
    version = _new_version()
    with store.writer():
        destination, digest = store.publish_copy(artifact, "models", f"{version}.pt")
        row = {
            "model_version": [version],
            "created_at": [datetime.now(UTC)],
            "artifact_path": [destination],
            "artifact_sha256": [digest],
            "gate_kind": [gate_kind],
            "expert_keys": [list(expert_keys)],
            "input_length": [input_length],
            "pred_length": [pred_length],
            "train_windows": [train_windows],
            "backtest_mase": [backtest_mase],
            "metrics_json": [json.dumps(metrics, default=str)],
        }
        store.write_part("model_versions", version, pa.table(row))
        record_event(store, version, "registered", "trained by retrain")
        return version


def record_event(store: Store, version: str, event: str, reason: str) -> None:
    row = {
        "model_version": [version],
        "event": [event],
        "event_at": [datetime.now(UTC)],
        "reason": [reason],
    }
    store.write_part("model_events", f"{version}-{event}-{uuid.uuid4().hex[:8]}", pa.table(row))


def _invalid(row: dict[str, object]) -> str | None:
    """Why a registry row cannot be trusted, or None (rows are validated when read)."""
    version = row.get("model_version")
    if not isinstance(version, str) or not _VERSION.match(version):
        return f"model_version {version!r} is not a version id this registry writes"
    sha = row.get("artifact_sha256")
    if not isinstance(sha, str) or not _SHA256.match(sha):
        return f"artifact_sha256 {sha!r} is not a sha256 digest"
    path = row.get("artifact_path")
    if not isinstance(path, str) or Path(path).name != f"{version}.pt":
        return f"artifact_path {path!r} is not <store>/models/{version}.pt"
    for name in ("input_length", "pred_length"):
        value = row.get(name)
        if not isinstance(value, int) or value < 1:
            return f"{name} {value!r} is not a positive integer"
    keys = row.get("expert_keys")
    if not isinstance(keys, list) or len(keys) < 2 or not all(isinstance(k, str) for k in keys):
        return f"expert_keys {keys!r} is not a list of at least two names"
    mase = row.get("backtest_mase")
    if mase is not None and not isinstance(mase, float):  # NaN is a (bad) score, not forgery
        return f"backtest_mase {mase!r} is not a number"
    if row.get("status") not in _STATUSES:
        return f"status {row.get('status')!r} is unknown"
    return None


def _row_to_version(row: dict[str, object]) -> ModelVersion:
    problem = _invalid(row)
    if problem is not None:
        raise RegistryError(
            f"registry row for model {row.get('model_version')!r} is invalid: {problem}; "
            "the store's model_versions table was changed outside the pipeline"
        )
    return ModelVersion(
        model_version=str(row["model_version"]),
        artifact_path=str(row["artifact_path"]),
        artifact_sha256=str(row["artifact_sha256"]),
        gate_kind=str(row["gate_kind"]),
        expert_keys=list(row["expert_keys"]),  # type: ignore[call-overload]
        input_length=int(row["input_length"]),  # type: ignore[call-overload]
        pred_length=int(row["pred_length"]),  # type: ignore[call-overload]
        backtest_mase=row["backtest_mase"],  # type: ignore[arg-type]
        status=str(row["status"]),
        last_event=row["last_event"],  # type: ignore[arg-type]
    )


_COLUMNS = (
    "model_version, artifact_path, artifact_sha256, gate_kind, expert_keys, input_length, "
    "pred_length, backtest_mase, status, last_event"
)


def list_models(store: Store) -> list[ModelVersion]:
    """Every version, newest first."""
    rows = query(store, f"SELECT {_COLUMNS} FROM model_registry ORDER BY created_at DESC")
    return [_row_to_version(row) for row in rows.to_pylist()]


def get_model(store: Store, version: str) -> ModelVersion:
    rows = query(
        store, f"SELECT {_COLUMNS} FROM model_registry WHERE model_version = $1", [version]
    )
    if rows.num_rows == 0:
        known = [m.model_version for m in list_models(store)]
        raise RegistryError(
            f"unknown model version {version!r}; known: {known} (see moe models list)"
        )
    return _row_to_version(rows.to_pylist()[0])


def champion(store: Store) -> ModelVersion | None:
    rows = query(store, f"SELECT {_COLUMNS} FROM model_registry WHERE status = 'champion'")
    return _row_to_version(rows.to_pylist()[0]) if rows.num_rows else None


def _artifact_file(store: Store, model: ModelVersion) -> Path:
    """The artifact's path, refused unless it is a regular file in the store's models folder."""
    folder = models_dir(store).resolve()
    path = Path(model.artifact_path)
    if not path.is_absolute():
        path = store.root / path
    if path.is_symlink():
        raise RegistryError(f"artifact of {model.model_version} is a symbolic link: {path}")
    resolved = path.resolve()
    if resolved.parent != folder:
        # A store moved as a whole keeps working: the file is looked up under its own name.
        moved = folder / f"{model.model_version}.pt"
        if Path(model.artifact_path).parent.name == "models" and moved.is_file():
            resolved = moved
        else:
            raise RegistryError(
                f"artifact of {model.model_version} is outside the store's models folder "
                f"{folder}: {model.artifact_path}"
            )
    if resolved.name != f"{model.model_version}.pt":
        raise RegistryError(f"artifact of {model.model_version} has the wrong name: {resolved}")
    if not resolved.is_file():
        raise RegistryError(f"artifact of {model.model_version} is missing: {resolved}")
    return resolved


def _read_remote_artifact(store: Store, model: ModelVersion) -> bytes:
    """The bytes of ``<prefix>/models/<version>.pt`` of an ``s3://`` store, refused unless
    the registered location is that object (or the same name in a store copied elsewhere)."""
    location = store.locate("models", f"{model.model_version}.pt")
    if model.artifact_path != location and not model.artifact_path.endswith(
        f"/models/{model.model_version}.pt"
    ):
        raise RegistryError(
            f"artifact of {model.model_version} is outside the store's models folder "
            f"{store.locate('models')}: {model.artifact_path}"
        )
    try:
        return bytes(store.fs.cat_file(location))
    except FileNotFoundError as error:
        raise RegistryError(f"artifact of {model.model_version} is missing: {location}") from error


def read_verified_artifact(store: Store, model: ModelVersion) -> bytes:
    """The artifact's bytes, read once and checked against the registered sha256.

    Callers load from these bytes, so the file cannot change between check and use.
    """
    if store.remote:
        content = _read_remote_artifact(store, model)
    else:
        with open(_artifact_file(store, model), "rb") as handle:
            content = handle.read()
    actual = hashlib.sha256(content).hexdigest()
    if actual != model.artifact_sha256:
        raise RegistryError(
            f"artifact of {model.model_version} changed on disk after it was registered "
            f"(sha256 {actual}, registered {model.artifact_sha256}): refusing to use it; "
            f"restore the file or promote another version (moe models list)"
        )
    return content


def _verify(store: Store, model: ModelVersion) -> None:
    read_verified_artifact(store, model)


def promote(store: Store, version: str, reason: str) -> ModelVersion:
    """Make ``version`` the champion (its artifact must be intact)."""
    with store.writer():
        model = get_model(store, version)
        _verify(store, model)
        record_event(store, version, "promoted", reason)
    return get_model(store, version)


def rollback(store: Store, reason: str = "manual rollback") -> ModelVersion:
    """Restore the champion before the current one."""
    with store.writer():
        return _rollback_locked(store, reason)


def _rollback_locked(store: Store, reason: str) -> ModelVersion:
    history = (
        query(
            store,
            "SELECT model_version FROM model_events WHERE event IN ('promoted', 'rolled_back') "
            "ORDER BY event_at DESC",
        )
        .column("model_version")
        .to_pylist()
    )
    current = history[0] if history else None
    previous = next((v for v in history if v != current), None)
    if previous is None:
        raise RegistryError("no earlier champion to roll back to")
    model = get_model(store, previous)
    _verify(store, model)
    record_event(store, previous, "rolled_back", f"{reason} (from {current})")
    return get_model(store, previous)
