"""Monitoring: score past forecast runs once actuals have arrived, and raise alerts.

A forecast row for step ``k`` made when the series had ``origin_index`` points is
matched with point ``origin_index + k`` of the series' latest stored version (so actuals
arrive by ingesting the longer series). A run is scored again only when one of its series
got a new version since the run was last scored (or the run is new or re-made); its row in
``forecast_evaluations`` is replaced, never duplicated. Other runs keep their stored score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa

from moe.metrics import naive_scale
from moe.seasonality import season_length_of
from pipeline.config import EvaluateConfig
from storage.sql import query
from storage.store import Store

__all__ = ["RunScore", "EvaluationResult", "evaluate_forecasts", "mape_alert", "growth_alert"]

# For each forecast row whose actual has arrived: the actual, the 90% interval, and the
# series' history up to the forecast origin (for MASE's in-sample scale).
_MATCH_SQL = """
SELECT f.run_id, f.model_version, f.series_id, f.step, f.point, f.q05, f.q95,
       s.values[f.origin_index + f.step] AS actual,
       f.origin_index, min(f.created_at) OVER (PARTITION BY f.run_id) AS run_created_at
FROM forecasts f JOIN series s USING (series_id)
WHERE s.n_points >= f.origin_index + f.step
"""

_HISTORY_SQL = """
SELECT DISTINCT f.run_id, f.series_id, s.freq, s.values[1:f.origin_index] AS history
FROM forecasts f JOIN series s USING (series_id)
WHERE s.n_points >= f.origin_index + 1
"""

# Runs with an actual whose series version (or whose forecast rows) is newer than the run's
# stored score, or with no score yet: the only runs an evaluation scores.
_STALE_SQL = """
SELECT DISTINCT f.run_id
FROM forecasts f JOIN series s USING (series_id)
LEFT JOIN forecast_evaluations e ON e.run_id = f.run_id
WHERE s.n_points >= f.origin_index + 1
  AND (e.evaluated_at IS NULL OR s.ingested_at >= e.evaluated_at
       OR f.created_at >= e.evaluated_at)
"""

_STORED_SQL = """
SELECT e.run_id, e.model_version, c.created_at, e.n_series, e.n_points, e.mape, e.smape,
       e.mase, e.coverage_90
FROM forecast_evaluations e
JOIN (SELECT run_id, min(created_at) AS created_at FROM forecasts GROUP BY run_id) c
  USING (run_id)
"""
_ONLY_STALE = " AND list_contains($1, f.run_id)"


@dataclass(frozen=True)
class RunScore:
    run_id: str
    model_version: str
    created_at: datetime
    n_series: int
    n_points: int
    mape: float
    smape: float
    mase: float
    coverage_90: float


@dataclass(frozen=True)
class EvaluationResult:
    runs: list[RunScore]  # oldest first
    alert: str | None  # set when MAPE stayed above the threshold for N consecutive runs
    growth_alert: str | None = None  # set when last week's MAPE grew past the growth limit


def _score_run(rows: dict[str, np.ndarray], scales: dict[str, float]) -> tuple[float, ...]:
    actual, point = rows["actual"], rows["point"]
    observed = ~np.isnan(actual)
    actual, point = actual[observed], point[observed]
    lower, upper = rows["q05"][observed], rows["q95"][observed]
    errors = np.abs(actual - point)
    with np.errstate(invalid="ignore", divide="ignore"):
        mape = 100 * np.nanmean(np.where(actual != 0, errors / np.abs(actual), np.nan))
        denominator = np.abs(actual) + np.abs(point)
        smape = 200 * np.nanmean(np.where(denominator > 0, errors / denominator, 0.0))
        scale = np.array([scales.get(s, np.nan) for s in rows["series_id"][observed]])
        mase = np.nanmean(np.where(scale > 0, errors / scale, np.nan))
        inside = (actual >= lower) & (actual <= upper)
        coverage = float(inside[~np.isnan(lower)].mean()) if (~np.isnan(lower)).any() else np.nan
    return float(mape), float(smape), float(mase), coverage


def evaluate_forecasts(store: Store, config: EvaluateConfig) -> EvaluationResult:
    """Score the runs with newly arrived actuals; store one row per run; check the alerts."""
    # Under the writer lock no ingest is half-published, so every series version stamped
    # before ``scored_at`` is visible here, and any later one is newer than ``scored_at``.
    with store.writer():
        scored_at = datetime.now(UTC)
        stale = query(store, _STALE_SQL).column("run_id").to_pylist()
        matched = query(store, _MATCH_SQL + _ONLY_STALE, [stale])
        history = query(store, _HISTORY_SQL + _ONLY_STALE, [stale]).to_pylist()
        stored = query(store, _STORED_SQL).to_pylist()
    kept = [RunScore(**row) for row in stored if row["run_id"] not in set(stale)]
    scales_by_run: dict[str, dict[str, float]] = {}
    for row in history:
        values = np.array([np.nan if v is None else v for v in row["history"]], np.float64)
        season = season_length_of(row["freq"], values, config.season_length)
        scale = naive_scale(values[None, :], season)[0] if len(values) > 1 else np.nan
        scales_by_run.setdefault(row["run_id"], {})[row["series_id"]] = float(scale)
    runs: list[RunScore] = []
    run_ids = matched.column("run_id").to_numpy(zero_copy_only=False)
    for run_id in sorted(set(run_ids.tolist())):
        selected = matched.filter(pa.array(run_ids == run_id))
        rows = {
            name: selected.column(name).to_numpy(zero_copy_only=False)
            for name in ("series_id", "point", "q05", "q95")
        }
        rows["actual"] = np.array(
            [np.nan if v is None else v for v in selected.column("actual").to_pylist()], np.float64
        )
        for name in ("point", "q05", "q95"):
            rows[name] = np.array([np.nan if v is None else v for v in rows[name]], np.float64)
        mape, smape, mase, coverage = _score_run(rows, scales_by_run.get(run_id, {}))
        runs.append(
            RunScore(
                run_id=run_id,
                model_version=selected.column("model_version")[0].as_py(),
                created_at=selected.column("run_created_at")[0].as_py(),
                n_series=len(set(rows["series_id"].tolist())),
                n_points=int((~np.isnan(rows["actual"])).sum()),
                mape=mape,
                smape=smape,
                mase=mase,
                coverage_90=coverage,
            )
        )
    for run in runs:  # one part per run scored now, replaced on re-evaluation
        store.write_part(
            "forecast_evaluations",
            f"run-{run.run_id}",
            pa.table(
                {
                    "run_id": [run.run_id],
                    "model_version": [run.model_version],
                    "evaluated_at": [scored_at],
                    "n_series": [run.n_series],
                    "n_points": [run.n_points],
                    "mape": [run.mape],
                    "smape": [run.smape],
                    "mase": [run.mase],
                    "coverage_90": [run.coverage_90],
                }
            ),
        )
    runs = sorted(runs + kept, key=lambda r: r.created_at)
    return EvaluationResult(
        runs=runs,
        alert=mape_alert([(r.run_id, r.mape) for r in runs], config),
        growth_alert=growth_alert(runs, config),
    )


def growth_alert(runs: Sequence[RunScore], config: EvaluateConfig) -> str | None:
    """The alert message when realised MAPE grew week on week by more than the limit.

    Weeks end at the newest run's creation time: the mean MAPE of runs made in the 7 days
    up to it against the mean of the 7 days before. ``None`` without runs in both weeks.
    """
    scored = [r for r in runs if np.isfinite(r.mape)]
    if not scored:
        return None
    newest = max(r.created_at for r in scored)
    week = timedelta(days=7)
    this_week = [r.mape for r in scored if newest - week < r.created_at <= newest]
    last_week = [r.mape for r in scored if newest - 2 * week < r.created_at <= newest - week]
    if not this_week or not last_week:
        return None
    now, before = float(np.mean(this_week)), float(np.mean(last_week))
    if before <= 0 or now <= (1 + config.growth_threshold) * before:
        return None
    return (
        f"realised MAPE grew {100 * (now / before - 1):.0f}% week on week "
        f"({before:.1f}% -> {now:.1f}%; limit {100 * config.growth_threshold:.0f}%)"
    )


def mape_alert(runs: Sequence[tuple[str, float]], config: EvaluateConfig) -> str | None:
    """The alert message while realised MAPE stayed above the threshold for the last N runs.

    ``runs``: ``(run_id, mape)`` oldest first. ``None`` when the condition does not hold.
    """
    recent = list(runs[-config.consecutive_runs :])
    if len(recent) < config.consecutive_runs or not all(
        mape > config.mape_threshold for _, mape in recent
    ):
        return None
    return (
        f"realised MAPE above {config.mape_threshold:g}% for the last "
        f"{config.consecutive_runs} forecast runs: "
        + ", ".join(f"{run_id} {mape:.1f}%" for run_id, mape in recent)
    )
