"""The four flows. Each reads like an outline; the work is in ``pipeline``."""

from __future__ import annotations

from typing import Any

from prefect import Flow, flow, get_run_logger
from prefect.client.schemas.objects import FlowRun, State

from flows import alerts, artifacts, tasks
from pipeline import retrain as pipeline_retrain
from pipeline.config import EvaluateConfig, ForecastConfig, RetrainConfig
from storage.store import resolve_store_location

__all__ = ["ingest", "retrain", "batch_forecast", "evaluate"]


@flow(name="ingest", log_prints=True)
def ingest(paths: list[str], store: str | None = None) -> dict[str, int]:
    """Ingest JSONL/JSONL.gz files into the store; returns accepted/rejected totals."""
    opened = tasks.open_store(store)
    reports = [tasks.ingest_file(opened, path) for path in paths]
    artifacts.publish_ingest(reports)
    return {
        "accepted": sum(r.accepted for r in reports),
        "rejected": sum(r.rejected for r in reports),
    }


def _retrain_failed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """``on_failure`` hook: the failure becomes a ``moe.alert.retrain-failed`` event."""
    store = resolve_store_location(flow_run.parameters.get("store"))
    alerts.emit_alert(
        "retrain-failed",
        store,
        f"retrain flow run {flow_run.name} failed: {state.message}",
        flow_run_id=str(flow_run.id),
    )


@flow(name="retrain", log_prints=True, on_failure=[_retrain_failed])
def retrain(config: RetrainConfig = RetrainConfig(), store: str | None = None) -> dict[str, object]:
    """Ingest -> windows -> expert cache -> train gate -> backtest -> register/promote, then
    forecast after a promotion: ``pipeline.retrain.retrain``'s outline, each step a task."""
    opened = tasks.open_store(store)
    result = pipeline_retrain.retrain(opened, config, run=tasks.as_task)
    artifacts.publish_retrain(result)
    get_run_logger().info("%s: %s", result.model_version, result.reason)
    if not result.promoted:
        alerts.emit_alert(
            "not-promoted",
            opened.location,
            f"model {result.model_version} was not promoted: {result.reason}",
            model_version=result.model_version,
        )
    if result.forecast is not None:
        artifacts.publish_forecast(opened, result.forecast)
    return {
        "model_version": result.model_version,
        "promoted": result.promoted,
        "backtest_mase": result.challenger_mase,
    }


@flow(name="batch-forecast", log_prints=True)
def batch_forecast(
    config: ForecastConfig = ForecastConfig(), store: str | None = None
) -> dict[str, object]:
    """The champion gate over stored series (or a selection) -> forecasts table."""
    opened = tasks.open_store(store)
    run = tasks.batch_forecast(opened, config)
    artifacts.publish_forecast(opened, run)
    return {"run_id": run.run_id, "model_version": run.model_version, "rows": run.n_rows}


@flow(name="evaluate", log_prints=True)
def evaluate(config: EvaluateConfig = EvaluateConfig(), store: str | None = None) -> list[str]:
    """Score past forecasts against actuals that arrived; warn on sustained high error."""
    opened = tasks.open_store(store)
    result = tasks.evaluate_forecasts(opened, config)
    artifacts.publish_evaluation(opened, result)
    for kind, message in (("realised-error", result.alert), ("error-growth", result.growth_alert)):
        if message:
            get_run_logger().warning(message)
            alerts.emit_alert(kind, opened.location, message, runs=[r.run_id for r in result.runs])
    return [run.run_id for run in result.runs]
