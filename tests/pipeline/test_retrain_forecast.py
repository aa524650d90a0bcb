"""Retrain -> registry -> batch forecast -> evaluate, as plain functions with fake experts."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe.experts.fake import fake_trio
from pipeline.config import EvaluateConfig, ForecastConfig, RetrainConfig
from pipeline.evaluate import evaluate_forecasts
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from storage import Store, ingest_jsonl
from storage.registry import champion, list_models
from storage.schemas import QUANTILE_COLUMNS
from storage.sql import query
from tests.pipeline.conftest import write_series

FAST_TRAIN = {"epochs": 3, "batch_size": 32, "lr": 0.01}
FAKES = fake_trio()


def _config(**overrides: object) -> RetrainConfig:
    base = {
        "experts": ["seasonal_naive", "autoets", "autotheta"],
        "input_length": 24,
        "pred_length": 6,
        "max_windows_per_series": 4,
        "train": FAST_TRAIN,
        "forecast_after": False,  # these tests run batch_forecast themselves
    }
    return RetrainConfig.model_validate({**base, **overrides})


def test_plain_retrain_forecasts_after_a_promotion(store: Store, series_file: Path) -> None:
    """Guards issue 12: the plain outline (moe retrain without Prefect) forecasts after a
    promotion exactly as the flow does, with the experts it already loaded."""
    config = _config(jsonl_paths=[str(series_file)], forecast_after=True)
    result = retrain(store, config, experts=fake_trio())
    assert result.promoted and result.forecast is not None
    assert result.forecast.model_version == result.model_version
    counts = query(
        store, "SELECT count(*) FROM forecasts WHERE run_id = $1", [result.forecast.run_id]
    )
    assert counts.column(0).to_pylist() == [24 * 6]
    rejected = retrain(
        store, config.model_copy(update={"promotion_margin": 0.9}), experts=fake_trio()
    )
    assert not rejected.promoted and rejected.forecast is None


def test_retrain_registers_and_promotes_first_model(store: Store, series_file: Path) -> None:
    """The first retrain becomes champion and stores backtest rows for every model."""
    result = retrain(store, _config(jsonl_paths=[str(series_file)]), experts=fake_trio())
    assert result.promoted and champion(store).model_version == result.model_version
    models = set(query(store, "SELECT DISTINCT model FROM backtest_metrics").column(0).to_pylist())
    assert models == {
        "moirai",
        "timemoe",
        "timesfm",
        "mixture",
        "equal_weight",
        "best_in_hindsight",
        "learned_gate",
        "constant_pair",
        "mixture_uncalibrated",
    }
    per_series = (
        query(
            store, "SELECT count(DISTINCT series_id) FROM backtest_metrics WHERE model = 'mixture'"
        )
        .column(0)
        .to_pylist()
    )
    assert per_series == [24]


def test_challenger_must_beat_champion_by_margin(store: Store, series_file: Path) -> None:
    """An identical retrain does not beat the champion by 5%: it is archived, not promoted."""
    config = _config(jsonl_paths=[str(series_file)])
    first = retrain(store, config, experts=fake_trio())
    second = retrain(store, config, experts=fake_trio())
    assert not second.promoted and "needs <=" in second.reason
    assert champion(store).model_version == first.model_version
    statuses = {m.model_version: m.last_event for m in list_models(store)}
    assert statuses[second.model_version] == "rejected"
    easy = retrain(store, config.model_copy(update={"promotion_margin": 0.0}), experts=fake_trio())
    assert easy.promoted  # equal MASE passes a zero margin


def test_batch_forecast_rows_and_rerun(store: Store, series_file: Path) -> None:
    """Long-format rows for every series and step; a rerun of a run id replaces its rows."""
    retrain(store, _config(jsonl_paths=[str(series_file)]), experts=FAKES)
    run = batch_forecast(
        store, experts=FAKES, config=ForecastConfig(run_id="nightly", chunk_size=5)
    )
    assert (run.n_series, run.n_rows) == (24, 24 * 6)
    batch_forecast(store, experts=FAKES, config=ForecastConfig(run_id="nightly", chunk_size=7))
    rows = query(store, "SELECT * FROM forecasts WHERE run_id = 'nightly'").to_pylist()
    assert len(rows) == 24 * 6
    first = rows[0]
    assert set(QUANTILE_COLUMNS) <= set(first) and first["expert_1"] != first["expert_2"]
    assert abs(first["weight_1"] + first["weight_2"] - 1) < 1e-6
    stamped = query(
        store,
        "SELECT step, timestamp FROM latest_forecasts WHERE series_id = 's000' ORDER BY step",
    ).to_pylist()
    assert str(stamped[0]["timestamp"].date()) == "2025-01-01"  # 60 months after 2020-01
    unstamped = query(
        store, "SELECT count(*) FROM forecasts WHERE series_id = 's001' AND timestamp IS NULL"
    )
    assert unstamped.column(0).to_pylist() == [6]


def test_forecast_selection_and_unknown_series(store: Store, series_file: Path) -> None:
    """A selection forecasts only those series; an unknown id is a clear error."""
    retrain(store, _config(jsonl_paths=[str(series_file)]), experts=FAKES)
    run = batch_forecast(store, experts=FAKES, config=ForecastConfig(series_ids=["s001", "s002"]))
    assert run.n_series == 2
    with pytest.raises(ValueError, match="not in the store"):
        batch_forecast(store, experts=FAKES, config=ForecastConfig(series_ids=["s001", "nope"]))


def test_evaluate_scores_runs_once_actuals_arrive(store: Store, tmp_path: Path) -> None:
    """After longer series arrive, each run gets one realised-error row; alerts after N bad runs."""
    short = write_series(tmp_path / "short.jsonl", length=60)
    retrain(store, _config(jsonl_paths=[str(short)]), experts=fake_trio())
    for run_id in ("r1", "r2", "r3"):
        batch_forecast(store, experts=FAKES, config=ForecastConfig(run_id=run_id))
    assert evaluate_forecasts(store, EvaluateConfig()).runs == []  # no actuals yet
    longer = write_series(tmp_path / "long.jsonl", length=66)  # same start, 6 more points
    ingest_jsonl(store, longer)
    result = evaluate_forecasts(store, EvaluateConfig(mape_threshold=0.001, consecutive_runs=3))
    assert [r.run_id for r in result.runs] == ["r1", "r2", "r3"]
    assert all(r.n_points == 24 * 6 for r in result.runs)
    assert result.alert and "r1" in result.alert
    evaluate_forecasts(store, EvaluateConfig())
    count = query(store, "SELECT count(*) FROM forecast_evaluations").column(0).to_pylist()
    assert count == [3]  # re-evaluation replaces, never duplicates
    calm = evaluate_forecasts(store, EvaluateConfig(mape_threshold=1e9))
    assert calm.alert is None


def _evaluated_at(store: Store) -> dict[str, object]:
    rows = query(store, "SELECT run_id, evaluated_at FROM forecast_evaluations").to_pylist()
    return {row["run_id"]: row["evaluated_at"] for row in rows}


def test_evaluate_scores_only_runs_with_new_actuals(store: Store, tmp_path: Path) -> None:
    """A second evaluate re-scores nothing; a new version of one series re-scores only the
    runs that forecast it, and the untouched run keeps its stored score."""
    short = write_series(tmp_path / "short.jsonl", length=60)
    retrain(store, _config(jsonl_paths=[str(short)]), experts=fake_trio())
    batch_forecast(store, experts=FAKES, config=ForecastConfig(run_id="all"))
    batch_forecast(store, experts=FAKES, config=ForecastConfig(run_id="one", series_ids=["s001"]))
    ingest_jsonl(store, write_series(tmp_path / "long.jsonl", length=66))
    first = evaluate_forecasts(store, EvaluateConfig())
    stamps = _evaluated_at(store)
    assert sorted(stamps) == ["all", "one"]
    again = evaluate_forecasts(store, EvaluateConfig())
    assert again.runs == first.runs  # the stored scores, not re-computed
    assert _evaluated_at(store) == stamps
    newer = write_series(tmp_path / "newer.jsonl", length=67)
    lines = [line for line in newer.read_text().splitlines() if '"s005"' in line]
    assert len(lines) == 1
    (tmp_path / "s005.jsonl").write_text(lines[0] + "\n")
    ingest_jsonl(store, tmp_path / "s005.jsonl")
    third = evaluate_forecasts(store, EvaluateConfig())
    after = _evaluated_at(store)
    assert after["one"] == stamps["one"] and after["all"] > stamps["all"]
    assert [r.run_id for r in third.runs] == [r.run_id for r in first.runs]


@pytest.mark.parametrize(
    ("start", "freq", "n_points"),
    [
        ("2020-01-01", "MS", 60),
        ("2020-01-15", "MS", 5),
        ("2020-01-31", "ME", 3),
        ("2021-03-01 10:00", "h", 30),
        ("2020-01-08", "W-MON", 10),
        ("2019-06-30", "YE", 2),
        ("2020-01-01 00:07", "15min", 7),
        ("2020-01-03", "B", 9),
    ],
)
def test_forecast_timestamps_match_date_range(start: str, freq: str, n_points: int) -> None:
    """The shortcut for forecast timestamps equals pandas.date_range past the history."""
    import pandas as pd

    from pipeline.forecast import _timestamps

    expected = pd.date_range(pd.Timestamp(start), periods=n_points + 4, freq=freq)[n_points:]
    got = [pd.Timestamp(t).tz_localize(None) for t in _timestamps(start, freq, n_points, 4)]
    assert got == list(expected)
