"""``moe serve``: register both scheduled deployments and run them from this process.

The one-command local route (design.md): needs a running Prefect server
(``prefect server start``; ``PREFECT_API_URL`` pointing at it). For several machines use
``prefect deploy --all`` (prefect.yaml) and ``prefect worker start --pool moe-process``.
"""

from __future__ import annotations

import os

from prefect import serve
from prefect.client.schemas.schedules import CronSchedule

from flows.jobs import batch_forecast, evaluate, retrain
from pipeline.config import DaskConfig

__all__ = ["deployments", "serve_all", "TIMEZONE_ENV_VAR"]

TIMEZONE_ENV_VAR = "MOE_TIMEZONE"
WEEKLY_RETRAIN_CRON = "0 3 * * 1"  # Monday 03:00
DAILY_FORECAST_CRON = "0 5 * * *"  # every day 05:00
DAILY_EVALUATE_CRON = "0 4 * * *"  # every day 04:00, before the forecast


def deployments(
    timezone: str | None = None, store: str | None = None, dask: DaskConfig | None = None
) -> list:
    """The deployments ``serve`` registers (same names and schedules as prefect.yaml).

    ``dask``: the default ``config.dask`` of the retrain and batch-forecast runs (their
    expert cache and forecast shard over that cluster); a custom run's form can change it.
    """
    zone = timezone or os.environ.get(TIMEZONE_ENV_VAR, "UTC")
    parameters: dict[str, object] = {} if store is None else {"store": store}
    sharded = dict(parameters)
    if dask is not None:
        sharded["config"] = {"dask": dask.model_dump()}
    return [
        retrain.to_deployment(
            name="weekly-retrain",
            schedules=[CronSchedule(cron=WEEKLY_RETRAIN_CRON, timezone=zone)],
            concurrency_limit=1,  # two retrains never overlap
            parameters=sharded,
            tags=["moe"],
            description="Weekly retrain: ingest, expert cache, gate, backtest, promotion.",
        ),
        batch_forecast.to_deployment(
            name="daily-batch-forecast",
            schedules=[CronSchedule(cron=DAILY_FORECAST_CRON, timezone=zone)],
            concurrency_limit=1,
            parameters=sharded,
            tags=["moe"],
            description="Champion model over all stored series into the forecasts table.",
        ),
        evaluate.to_deployment(
            name="daily-evaluate",
            schedules=[CronSchedule(cron=DAILY_EVALUATE_CRON, timezone=zone)],
            parameters=parameters,
            tags=["moe"],
            description="Realised error of past forecasts; alerts on sustained high MAPE.",
        ),
    ]


def serve_all(
    timezone: str | None = None, store: str | None = None, dask: DaskConfig | None = None
) -> None:
    serve(*deployments(timezone, store, dask))
