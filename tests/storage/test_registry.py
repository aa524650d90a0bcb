"""Registry: versions are archived, promote and rollback move the champion, tampering is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import Store
from storage.registry import RegistryError, champion, list_models, promote, register_model, rollback


def _register(store: Store, tmp_path: Path, name: str, mase: float) -> str:
    artifact = tmp_path / f"{name}.pt"
    artifact.write_bytes(name.encode() * 10)
    return register_model(
        store,
        artifact,
        gate_kind="linear",
        expert_keys=["a", "b", "c"],
        input_length=4,
        pred_length=2,
        train_windows=10,
        backtest_mase=mase,
        metrics={"mase": mase},
    )


def test_promote_and_rollback(store: Store, tmp_path: Path) -> None:
    """The latest promotion is champion; rollback restores the one before; all stay listed."""
    first = _register(store, tmp_path, "first", 1.0)
    assert champion(store) is None
    promote(store, first, "initial")
    second = _register(store, tmp_path, "second", 0.8)
    promote(store, second, "better")
    assert champion(store).model_version == second
    restored = rollback(store, "bad forecasts")
    assert restored.model_version == first and champion(store).model_version == first
    statuses = {m.model_version: m.status for m in list_models(store)}
    assert statuses == {first: "champion", second: "archived"}
    promote(store, second, "restore archived version")
    assert champion(store).model_version == second


def test_rollback_without_history_and_unknown_version(store: Store, tmp_path: Path) -> None:
    """Rollback with one champion, or promoting an unknown id, fails clearly."""
    promote(store, _register(store, tmp_path, "only", 1.0), "initial")
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(store)
    with pytest.raises(RegistryError, match="unknown model version 'nope'"):
        promote(store, "nope", "x")


def test_tampered_artifact_is_not_promoted(store: Store, tmp_path: Path) -> None:
    """An artifact whose bytes changed after registration cannot become champion."""
    version = _register(store, tmp_path, "v", 1.0)
    model = list_models(store)[0]
    Path(model.artifact_path).write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="changed on disk"):
        promote(store, version, "x")
