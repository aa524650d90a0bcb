"""Retention of old forecast runs: ``moe store retain``.

A batch forecast run is one hive partition of ``forecasts`` (``run_id=<run>``). Runs older
than the retention period are dropped whole, except the runs that still hold some series'
latest forecast (``latest_forecasts`` would otherwise lose that series) and the newest
``keep_runs`` runs. Evaluation scores of dropped runs stay (they are their own tables).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from storage.sql import query
from storage.store import Store

__all__ = ["RetentionReport", "expire_forecast_runs"]


@dataclass(frozen=True)
class RetentionReport:
    """Which runs were dropped, and which old runs were kept and why."""

    cutoff: datetime
    dropped: list[str]
    kept_latest: list[str]  # older than the cutoff, but some series' latest forecast
    kept_newest: list[str]  # older than the cutoff, but among the newest keep_runs runs


_RUNS_SQL = """
SELECT run_id, max(created_at) AS created_at,
       bool_or(run_id IN (SELECT DISTINCT run_id FROM latest_forecasts)) AS holds_latest
FROM forecasts GROUP BY run_id ORDER BY created_at DESC, run_id
"""


def expire_forecast_runs(
    store: Store,
    older_than: timedelta,
    keep_runs: int = 1,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionReport:
    """Drop forecast runs created before ``now - older_than`` (see the module docstring).

    ``keep_runs``: the newest runs kept whatever their age (>= 0). ``dry_run``: report
    what would be dropped, change nothing.
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    if keep_runs < 0:
        raise ValueError(f"keep_runs must be >= 0, got {keep_runs}")
    cutoff = (now or datetime.now(UTC)) - older_than
    runs = query(store, _RUNS_SQL).to_pylist()
    dropped: list[str] = []
    kept_latest: list[str] = []
    kept_newest: list[str] = []
    for rank, run in enumerate(runs):
        if run["created_at"] is None or run["created_at"] >= cutoff:
            continue
        if rank < keep_runs:
            kept_newest.append(run["run_id"])
        elif run["holds_latest"]:
            kept_latest.append(run["run_id"])
        else:
            dropped.append(run["run_id"])
    if not dry_run:
        for run_id in dropped:
            store.drop_partition("forecasts", {"run_id": run_id})
    return RetentionReport(cutoff, dropped, kept_latest, kept_newest)
