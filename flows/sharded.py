"""Scale-out of the expert precompute: distinct windows cut into shards, one task each.

The task runner is the caller's choice, e.g. a Dask cluster (``pip install
moe-forecast[dask]``)::

    from prefect_dask import DaskTaskRunner
    runner = DaskTaskRunner(cluster_kwargs={"n_workers": 4, "threads_per_worker": 1})
    precompute_sharded.with_options(task_runner=runner)(config=config, store="/data/store")

Shards never conflict: windows are deduplicated by content before they are cut, and each
shard writes its own uniquely named, content-keyed Parquet parts (``storage.cache``). A
retrain afterwards finds everything cached and does no expert work.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from pydantic import Field

from flows import tasks
from moe.precompute import season_groups
from pipeline.config import RetrainConfig
from pipeline.precompute import PrecomputeStats, shard_contexts
from pipeline.retrain import ingest_and_window
from pipeline.training_data import fill_cache_shard

__all__ = ["precompute_sharded", "precompute_shard"]


# Loading expert weights touches the outside world; a retried shard redoes only what is
# missing (the cache is keyed by content).
precompute_shard = task(
    name="precompute-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5.0, 30.0]
)(fill_cache_shard)


@flow(name="precompute-sharded", log_prints=True)
def precompute_sharded(
    config: RetrainConfig = RetrainConfig(),
    store: str | None = None,
    shards: Annotated[int, Field(ge=1, le=4096)] = 2,
) -> list[PrecomputeStats]:
    """Ingest -> windows -> each shard of distinct windows precomputed by its own task."""
    opened = tasks.open_store(store)
    _, windows = ingest_and_window(opened, config, run=tasks.as_task)
    futures: list[PrefectFuture[list[PrecomputeStats]]] = []
    assert windows.season_length is not None  # prepare_windows always sets it
    for season, rows in season_groups(windows.season_length):  # experts differ per period
        blocks = shard_contexts(windows.context[rows], shards)
        futures += precompute_shard.map(
            unmapped(opened.location), unmapped(config), blocks, unmapped(season)
        )
    return [stats for future in futures for stats in future.result()]
