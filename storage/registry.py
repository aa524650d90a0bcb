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
import shutil
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
]


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
        return _register_locked(
            store,
            artifact,
            version,
            gate_kind=gate_kind,
            expert_keys=expert_keys,
            input_length=input_length,
            pred_length=pred_length,
            train_windows=train_windows,
            backtest_mase=backtest_mase,
            metrics=metrics,
        )


def _register_locked(
    store: Store,
    artifact: str | os.PathLike[str],
    version: str,
    *,
    gate_kind: str,
    expert_keys: Sequence[str],
    input_length: int,
    pred_length: int,
    train_windows: int,
    backtest_mase: float | None,
    metrics: dict[str, object],
) -> str:
    models_dir = store.root / "models"
    models_dir.mkdir(exist_ok=True)
    destination = models_dir / f"{version}.pt"
    staging = store.tmp_dir / f"{os.getpid()}-{version}.pt"
    shutil.copyfile(artifact, staging)
    os.replace(staging, destination)
    row = {
        "model_version": [version],
        "created_at": [datetime.now(UTC)],
        "artifact_path": [str(destination)],
        "artifact_sha256": [file_sha256(destination)],
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


def _row_to_version(row: dict[str, object]) -> ModelVersion:
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
        raise RegistryError(f"unknown model version {version!r}; known: {known}")
    return _row_to_version(rows.to_pylist()[0])


def champion(store: Store) -> ModelVersion | None:
    rows = query(store, f"SELECT {_COLUMNS} FROM model_registry WHERE status = 'champion'")
    return _row_to_version(rows.to_pylist()[0]) if rows.num_rows else None


def _verify(model: ModelVersion) -> None:
    path = Path(model.artifact_path)
    if not path.exists():
        raise RegistryError(f"artifact of {model.model_version} is missing: {path}")
    actual = file_sha256(path)
    if actual != model.artifact_sha256:
        raise RegistryError(
            f"artifact of {model.model_version} changed on disk: sha256 {actual}, "
            f"registered {model.artifact_sha256}"
        )


def promote(store: Store, version: str, reason: str) -> ModelVersion:
    """Make ``version`` the champion (its artifact must be intact)."""
    with store.writer():
        model = get_model(store, version)
        _verify(model)
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
    _verify(model)
    record_event(store, previous, "rolled_back", f"{reason} (from {current})")
    return get_model(store, previous)
