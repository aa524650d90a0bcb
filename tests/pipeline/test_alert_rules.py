"""The alert rules of the evaluate step, on hand-made run scores (no store needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.config import EvaluateConfig
from pipeline.evaluate import RunScore, growth_alert, mape_alert

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _run(days_ago: float, mape: float) -> RunScore:
    return RunScore(
        run_id=f"r-{days_ago}",
        model_version="v1",
        created_at=NOW - timedelta(days=days_ago),
        n_series=10,
        n_points=60,
        mape=mape,
        smape=mape,
        mase=1.0,
        coverage_90=0.9,
    )


def test_mape_alert_needs_n_consecutive_runs_above_threshold() -> None:
    """Guards the sustained-error rule: one good run among the last N clears it."""
    config = EvaluateConfig(mape_threshold=8.0, consecutive_runs=3)
    assert mape_alert([("a", 9.0), ("b", 9.5), ("c", 12.0)], config) is not None
    assert mape_alert([("a", 9.0), ("b", 7.9), ("c", 12.0)], config) is None
    assert mape_alert([("b", 9.5), ("c", 12.0)], config) is None  # fewer runs than N
    assert mape_alert([("a", 9.0), ("b", float("nan")), ("c", 12.0)], config) is None


def test_growth_alert_compares_the_last_week_with_the_week_before() -> None:
    """Guards the week-on-week rule: > 20% growth alerts, 20% or less does not."""
    config = EvaluateConfig(growth_threshold=0.20)
    grown = growth_alert([_run(10, 10.0), _run(8, 10.0), _run(3, 13.0), _run(0, 13.0)], config)
    assert grown is not None and "30%" in grown and "10.0% -> 13.0%" in grown
    assert growth_alert([_run(10, 10.0), _run(0, 12.0)], config) is None
    assert growth_alert([_run(10, 10.0), _run(0, 12.1)], config) is not None


def test_growth_alert_needs_both_weeks() -> None:
    """Guards a false alarm on a new store: no runs in the previous week means no alert."""
    config = EvaluateConfig()
    assert growth_alert([_run(3, 5.0), _run(0, 50.0)], config) is None
    assert growth_alert([_run(20, 5.0), _run(0, 50.0)], config) is None  # 20 days: too old
    assert growth_alert([], config) is None
