"""Artifacts are verified when a forecast uses them, not only when they are promoted."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from moe.artifact import ArtifactError, GateArtifact, save_artifact
from moe.experts.fake import fake_trio
from moe.gates import build_gate
from pipeline.config import ForecastConfig
from pipeline.forecast import batch_forecast
from storage import Store, ingest_jsonl
from storage.registry import RegistryError, champion, promote, register_model
from storage.sql import query

KEYS = ["moirai", "timemoe", "timesfm"]


def _artifact(**changes: object) -> GateArtifact:
    torch.manual_seed(0)
    gate = build_gate("linear", 8, 3, 3)
    fields: dict[str, object] = {
        "gating_state": gate.state_dict(),
        "expert_keys": list(KEYS),
        "input_length": 8,
        "pred_length": 3,
        "gate": {"kind": "linear"},
        "experts": [{"name": name, "cache_key": None, "config": {}} for name in KEYS],
    }
    fields.update(changes)
    return GateArtifact(**fields)  # type: ignore[arg-type]


def _champion_from(store: Store, tmp_path: Path, artifact: GateArtifact, **row: object) -> str:
    path = save_artifact(artifact, tmp_path / f"m{time.monotonic_ns()}.pt")
    version = register_model(
        store,
        path,
        gate_kind=str(row.get("gate_kind", "linear")),
        expert_keys=list(row.get("expert_keys", KEYS)),  # type: ignore[call-overload]
        input_length=int(row.get("input_length", 8)),  # type: ignore[call-overload]
        pred_length=int(row.get("pred_length", 3)),  # type: ignore[call-overload]
        train_windows=1,
        backtest_mase=1.0,
        metrics={},
    )
    promote(store, version, "test")
    return version


@pytest.fixture
def with_series(store: Store, tmp_path: Path) -> Store:
    data = tmp_path / "s.jsonl"
    data.write_text(
        "".join(
            json.dumps({"series_id": f"s{i}", "sequence": list(range(1, 20))}) + "\n"
            for i in range(3)
        )
    )
    ingest_jsonl(store, data)
    return store


def _forecast(store: Store) -> object:
    return batch_forecast(store, ForecastConfig(run_id="r"), experts=fake_trio())


def test_intact_champion_forecasts(with_series: Store, tmp_path: Path) -> None:
    """The happy path still works: a valid champion forecasts every series."""
    _champion_from(with_series, tmp_path, _artifact())
    assert _forecast(with_series).n_rows == 3 * 3  # type: ignore[attr-defined]


def test_champion_changed_after_promotion_is_refused(with_series: Store, tmp_path: Path) -> None:
    """A champion .pt altered on disk after promotion is not used (sha256 checked at use)."""
    _champion_from(with_series, tmp_path, _artifact())
    model = champion(with_series)
    assert model is not None
    other = save_artifact(_artifact(input_length=8), tmp_path / "other.pt")
    gate = torch.load(other, weights_only=True)
    gate["gating_state"] = {k: v + 1 for k, v in gate["gating_state"].items()}
    torch.save(gate, model.artifact_path)
    with pytest.raises(RegistryError, match="changed on disk"):
        _forecast(with_series)
    assert query(with_series, "SELECT count(*) FROM forecasts").column(0)[0].as_py() == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {
                "gating_state": {
                    "linear.weight": torch.full((3, 8), float("nan")),
                    "linear.bias": torch.zeros(3),
                }
            },
            "NaN or infinite",
        ),
        (
            {
                "gating_state": {
                    "linear.weight": torch.zeros(3, 8),
                    "linear.bias": torch.tensor([0.0, float("inf"), 0.0]),
                }
            },
            "NaN",
        ),
        ({"pred_length": 10**9}, "pred_length must be an integer"),
        ({"input_length": 0}, "input_length must be an integer"),
        ({"expert_keys": ["timemoe", "moirai", "timesfm"]}, "disagree with the experts"),
        ({"expert_keys": ["moirai", "moirai", "timesfm"]}, "distinct"),
        ({"gate": {"kind": "contextual", "width": 10**7}}, "gate width"),
        ({"quantile_levels": [0.5, 1.5]}, "quantile_levels"),
    ],
)
def test_inconsistent_artifacts_are_refused_at_use(
    with_series: Store, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    """NaN weights, huge lengths, keys that disagree with experts: refused before forecasting."""
    started = time.monotonic()
    _champion_from(with_series, tmp_path, _artifact(**changes))
    with pytest.raises(ArtifactError, match=message):
        _forecast(with_series)
    assert time.monotonic() - started < 30  # refused before anything huge is allocated


def test_registry_and_file_must_agree(with_series: Store, tmp_path: Path) -> None:
    """A registry row whose lengths differ from its file is refused."""
    _champion_from(with_series, tmp_path, _artifact(), pred_length=5)
    with pytest.raises(ArtifactError, match="registry says"):
        _forecast(with_series)


def _fake_row(store: Store, version: str, path: str, sha: str) -> None:
    row = {
        "model_version": [version],
        "created_at": [datetime(2099, 1, 1, tzinfo=UTC)],
        "artifact_path": [path],
        "artifact_sha256": [sha],
        "gate_kind": ["linear"],
        "expert_keys": [KEYS],
        "input_length": [8],
        "pred_length": [3],
        "train_windows": [1],
        "backtest_mase": [0.1],
        "metrics_json": ["{}"],
    }
    store.write_part("model_versions", "forged", pa.table(row))
    store.write_part(
        "model_events",
        "forged-event",
        pa.table(
            {
                "model_version": [version],
                "event": ["promoted"],
                "event_at": [datetime(2099, 1, 1, tzinfo=UTC)],
                "reason": ["forged"],
            }
        ),
    )


def test_forged_registry_row_outside_models_folder(with_series: Store, tmp_path: Path) -> None:
    """A row written behind the pipeline's back, pointing outside <store>/models, is refused."""
    outside = save_artifact(_artifact(), tmp_path / "v20990101-000000-abcdef.pt")
    sha = hashlib.sha256(outside.read_bytes()).hexdigest()
    _fake_row(with_series, "v20990101-000000-abcdef", str(outside), sha)
    with pytest.raises(RegistryError, match="outside the store's models folder"):
        _forecast(with_series)


def test_forged_registry_row_with_bad_fields(with_series: Store, tmp_path: Path) -> None:
    """Registry rows are validated when read: a bogus version id or digest is named."""
    _fake_row(with_series, "../../etc/passwd", "/etc/passwd", "0" * 64)
    with pytest.raises(RegistryError, match="registry row .* is invalid"):
        _forecast(with_series)
    with pytest.raises(RegistryError, match="is invalid"):
        promote(with_series, "../../etc/passwd", "x")
