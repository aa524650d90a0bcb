"""Prefect tasks: each wraps exactly one plain function from ``pipeline`` or ``storage``.

Retries (with backoff) only where the outside world can fail: reading input files and
loading expert weights. Tasks that pass arrays/tensors between each other opt out of
Prefect's input hashing (``NO_CACHE``): the expert cache in the store is the cache.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline import evaluate, forecast, retrain
from storage.ingest import ingest_jsonl
from storage.store import Store

__all__ = [
    "open_store",
    "ingest_file",
    "build_experts",
    "prepare_windows",
    "fill_cache",
    "load_training_data",
    "train_and_backtest",
    "register_and_decide",
    "batch_forecast",
    "evaluate_forecasts",
]

_IO_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30]}

open_store = task(Store.open, name="open-store", cache_policy=NO_CACHE)
ingest_file = task(ingest_jsonl, name="ingest-file", cache_policy=NO_CACHE, **_IO_RETRIES)
build_experts = task(
    retrain.build_experts_for, name="load-experts", cache_policy=NO_CACHE, **_IO_RETRIES
)
prepare_windows = task(retrain.prepare_windows, name="windows", cache_policy=NO_CACHE)
fill_cache = task(retrain.fill_cache, name="expert-cache", cache_policy=NO_CACHE)
load_training_data = task(retrain.load_training_data, name="read-cache", cache_policy=NO_CACHE)
train_and_backtest = task(retrain.train_and_backtest, name="train-gate", cache_policy=NO_CACHE)
register_and_decide = task(retrain.register_and_decide, name="register", cache_policy=NO_CACHE)
batch_forecast = task(forecast.batch_forecast, name="batch-forecast", cache_policy=NO_CACHE)
evaluate_forecasts = task(evaluate.evaluate_forecasts, name="evaluate", cache_policy=NO_CACHE)
