"""Prefect tasks: each wraps exactly one plain function from ``pipeline`` or ``storage``.

Retries (with backoff) only where the outside world can fail: reading input files and
loading expert weights. Tasks that pass arrays/tensors between each other opt out of
Prefect's input hashing (``NO_CACHE``): the expert cache in the store is the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline import evaluate, forecast, retrain, training_data
from storage.ingest import ingest_jsonl
from storage.store import Store

__all__ = [
    "open_store",
    "ingest_file",
    "build_experts",
    "train_experts",
    "prepare_windows",
    "fill_cache",
    "load_training_data",
    "train_and_backtest",
    "register_and_decide",
    "batch_forecast",
    "evaluate_forecasts",
    "as_task",
]

_IO = {"retries": 2, "retry_delay_seconds": [5.0, 30.0]}  # outside world: files, weights


def _wrap(name: str, **options: object):  # -> decorator
    return task(name=name, cache_policy=NO_CACHE, **options)  # type: ignore[call-overload]


open_store = _wrap("open-store")(Store.open)
ingest_file = _wrap("ingest-file", **_IO)(ingest_jsonl)
build_experts = _wrap("load-experts", **_IO)(training_data.build_experts_for)
train_experts = _wrap("train-global-expert")(training_data.add_trained_experts)
prepare_windows = _wrap("windows")(training_data.prepare_windows)
fill_cache = _wrap("expert-cache")(training_data.fill_cache)
load_training_data = _wrap("read-cache")(training_data.load_training_data)
train_and_backtest = _wrap("train-gate")(retrain.train_and_backtest)
register_and_decide = _wrap("register")(retrain.register_and_decide)
batch_forecast = _wrap("batch-forecast")(forecast.batch_forecast)
evaluate_forecasts = _wrap("evaluate")(evaluate.evaluate_forecasts)

#: The task of each step of ``pipeline.retrain``'s outline.
_TASK_OF = {
    ingest_jsonl: ingest_file,
    training_data.build_experts_for: build_experts,
    training_data.add_trained_experts: train_experts,
    training_data.prepare_windows: prepare_windows,
    training_data.fill_cache: fill_cache,
    training_data.load_training_data: load_training_data,
    retrain.train_and_backtest: train_and_backtest,
    retrain.register_and_decide: register_and_decide,
    forecast.batch_forecast: batch_forecast,
}


def as_task(step: Callable[..., Any]) -> Callable[..., Any]:
    """``pipeline.retrain.StepRunner`` for flows: each step runs as its Prefect task."""
    try:
        return _TASK_OF[step]  # type: ignore[no-any-return]
    except KeyError:
        raise KeyError(f"no Prefect task wraps the step {step.__qualname__}") from None
