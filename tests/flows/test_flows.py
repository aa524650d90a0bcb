"""The four flows run for real (offline experts) under the session's Prefect harness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact
from prefect.exceptions import ParameterTypeError
from prefect.states import State

from flows.jobs import batch_forecast, evaluate, ingest, retrain
from pipeline.config import ForecastConfig, RetrainConfig
from storage import Store
from storage.sql import query
from tests.flows.conftest import FAST_RETRAIN

pytestmark = pytest.mark.usefixtures("prefect_harness")

N_SERIES, HORIZON = 24, 6


def _run_id(state: State) -> UUID:
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return flow_run_id


def _artifacts(flow_run_id: UUID) -> dict[str, Artifact]:
    """The artifacts a flow run published, by key."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {artifact.key: artifact for artifact in found if artifact.key}


def _table(artifact: Artifact) -> list[dict[str, Any]]:
    """The rows of a table artifact (stored as JSON text)."""
    assert isinstance(artifact.data, str), artifact
    rows = json.loads(artifact.data)
    assert isinstance(rows, list)
    return rows


def _count(store: Store, sql: str, parameters: list[object] | None = None) -> int:
    return int(query(store, sql, parameters).column(0)[0].as_py())


@pytest.fixture(scope="module")
def trained(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory, series_jsonl: Path
) -> tuple[Store, State]:
    """One store after a completed retrain flow run (its state kept for artifact checks)."""
    store = Store.open(tmp_path_factory.mktemp("flows") / "store")
    config = RetrainConfig.model_validate({**FAST_RETRAIN, "jsonl_paths": [str(series_jsonl)]})
    state = retrain(config=config, store=str(store.root), return_state=True)
    assert state.is_completed(), state.message
    return store, state


def test_ingest_flow_counts_rejects_and_publishes(tmp_path: Path, series_jsonl: Path) -> None:
    """The ingest flow's totals keep rows in = accepted + rejected and land as an artifact."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"series_id": "broken", "sequence": "not a list"}\n')
    store = Store.open(tmp_path / "store")
    state = ingest(paths=[str(series_jsonl), str(bad)], store=str(store.root), return_state=True)
    assert state.result() == {"accepted": N_SERIES, "rejected": 1}
    assert _count(store, "SELECT count(*) FROM series") == N_SERIES
    counts = _artifacts(_run_id(state))["ingest-counts"]
    assert {row["accepted"] for row in _table(counts)} == {N_SERIES, 0}


def test_retrain_flow_registers_champion_and_forecasts(trained: tuple[Store, State]) -> None:
    """A first retrain promotes a champion and (forecast_after) fills the forecasts table."""
    store, state = trained
    outcome = state.result()
    assert outcome["promoted"] is True
    champions = query(
        store, "SELECT model_version FROM model_registry WHERE status = 'champion'"
    ).column(0)
    assert champions.to_pylist() == [outcome["model_version"]]
    assert _count(store, "SELECT count(*) FROM forecasts") == N_SERIES * HORIZON
    assert _count(store, "SELECT count(DISTINCT expert) FROM expert_forecasts") == 3


def test_retrain_flow_publishes_leaderboard(trained: tuple[Store, State]) -> None:
    """The retrain run shows a backtest leaderboard (mixture and every expert) in the UI."""
    _, state = trained
    published = _artifacts(_run_id(state))
    assert {"backtest-leaderboard", "retrain-decision", "model-artifact"} <= set(published)
    models = {row["model"] for row in _table(published["backtest-leaderboard"])}
    assert {"mixture", "seasonal_naive", "autoets", "autotheta"} <= models


def test_batch_forecast_flow_rows_and_artifacts(trained: tuple[Store, State]) -> None:
    """The batch forecast writes one row per series and step and publishes shares + plot."""
    store, _ = trained
    config = ForecastConfig(run_id="flow-test", chunk_size=10)
    state = batch_forecast(config=config, store=str(store.root), return_state=True)
    assert state.result()["rows"] == N_SERIES * HORIZON
    rows = _count(store, "SELECT count(*) FROM forecasts WHERE run_id = $1", ["flow-test"])
    assert rows == N_SERIES * HORIZON
    published = _artifacts(_run_id(state))
    assert {"routing-shares", "forecast-plot", "forecast-run"} <= set(published)
    shares = _table(published["routing-shares"])
    assert sum(row["series"] for row in shares) == 2 * N_SERIES  # two experts per series
    assert "data:image/png;base64," in str(published["forecast-plot"].data)


def test_evaluate_flow_says_when_no_actuals_have_arrived(trained: tuple[Store, State]) -> None:
    """Guards honest monitoring: no actuals yet is said in words, not shown as an empty table."""
    store, _ = trained
    state = evaluate(store=str(store.root), return_state=True)
    assert state.result() == []
    published = _artifacts(_run_id(state))
    assert "realised-error" not in published
    assert "No actuals have arrived yet" in str(published["realised-error-status"].data)


def test_evaluate_flow_scores_runs_once_actuals_arrive(
    trained: tuple[Store, State], tmp_path: Path
) -> None:
    """After longer series arrive, evaluate scores every forecast run and publishes it."""
    store, _ = trained
    longer = tmp_path / "longer.jsonl"
    with open(longer, "w") as handle:
        for row in query(store, "SELECT series_id, values FROM series").to_pylist():
            actuals = [row["values"][-1]] * HORIZON  # the last value carried on
            record = {"series_id": row["series_id"], "sequence": row["values"] + actuals}
            handle.write(json.dumps(record) + "\n")
    ingest(paths=[str(longer)], store=str(store.root))
    state = evaluate(store=str(store.root), return_state=True)
    scored = state.result()
    forecast_runs = query(store, "SELECT DISTINCT run_id FROM forecasts").column(0).to_pylist()
    assert sorted(scored) == sorted(forecast_runs) and len(scored) >= 1
    assert _count(store, "SELECT count(*) FROM forecast_evaluations") == len(scored)
    published = _artifacts(_run_id(state))
    table = _table(published["realised-error"])
    assert {row["points"] for row in table} == {N_SERIES * HORIZON}
    groups = _table(published["realised-error-by-frequency"])
    assert sum(row["series"] for row in groups) == N_SERIES
    assert {row["freq"] for row in groups} <= {"MS", "(no freq)"}
    assert "data:image/png;base64," in str(published["forecast-vs-actual"].data)


@pytest.mark.parametrize(
    ("update", "field"),
    [
        ({"experts": ["seasonal_naive", "no_such_expert"]}, "experts"),
        ({"input_length": 0}, "input_length"),
        ({"experts": ["autoets"]}, "experts"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_retrain_parameters_are_rejected(
    tmp_path: Path, update: dict[str, object], field: str
) -> None:
    """Bad run-form values fail Prefect's parameter validation, naming the field, before work."""
    config = {**FAST_RETRAIN, **update}
    with pytest.raises(ParameterTypeError, match=field):
        retrain.validate_parameters({"config": config, "store": str(tmp_path)})
    with pytest.raises(ParameterTypeError, match=field):
        retrain(config=config, store=str(tmp_path / "store"))  # type: ignore[call-overload]
    assert not (tmp_path / "store").exists()  # rejected before the flow opened a store
