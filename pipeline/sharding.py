"""Sharded steps on a Dask cluster: the retrain's expert cache and the batch forecast.

Imported only when a job's config sets ``dask`` (``pipeline.config.DaskConfig``); without
it both steps run in the calling process and Dask is never imported. The outline
(``pipeline.retrain.retrain``) does not change: ``fill_cache`` and ``batch_forecast`` hand
their work to the functions here.

- Expert cache: the distinct windows are cut into shards (``shard_contexts``); each shard is
  one Dask task (``fill_cache_shard``) that builds the experts on its worker and writes its
  own content-keyed cache parts under the store's writer lock. Whatever the workers could
  not build (trained experts, experts handed in by the caller) is then computed here; the
  cache is read back as usual.
- Batch forecast: the series are cut into contiguous shards; each task
  (``forecast_shard``) forecasts its series and returns their rows, which this process
  writes into the run's one staged partition (``Store.rewrite_partition``), so a rerun of
  a run id still replaces its rows whole and each series/step appears once.
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pyarrow as pa

from moe.data import Windows
from moe.experts.base import Expert
from moe.precompute import season_groups
from pipeline.config import DaskConfig, ForecastConfig, RetrainConfig
from pipeline.forecast import (
    ForecastRun,
    choose_model,
    count_usage,
    forecast_shard,
    new_run_id,
    series_to_forecast,
)
from pipeline.precompute import PrecomputeStats, shard_contexts
from pipeline.training_data import cache_windows, fill_cache_shard
from storage.store import Store

try:
    from distributed import Client, LocalCluster, as_completed
    from distributed.core import Status
except ImportError as error:  # pragma: no cover - the [dask] extra is installed in CI
    raise ImportError(
        "the job's config sets 'dask', but Dask is not installed: "
        "pip install 'moe-forecast[dask]' (or remove 'dask' from the config)"
    ) from error

__all__ = [
    "dask_client",
    "close_local_clusters",
    "shard_count",
    "fill_cache_sharded",
    "forecast_sharded",
]

_log = logging.getLogger(__name__)


#: LocalClusters started by this process, kept for its later steps (a retrain's cache step
#: and its forecast after a promotion share one) and closed when the process exits.
_LOCAL: dict[tuple[int, bool], LocalCluster] = {}


def _local_cluster(settings: DaskConfig) -> LocalCluster:
    key = (settings.workers, settings.processes)
    cluster = _LOCAL.get(key)
    if cluster is None or cluster.status != Status.running:
        started = time.perf_counter()
        cluster = LocalCluster(
            n_workers=settings.workers,
            threads_per_worker=1,
            processes=settings.processes,
            dashboard_address=None,
        )
        _LOCAL[key] = cluster
        _log.info(
            "Dask LocalCluster: %d %s started in %.1f s",
            settings.workers,
            "processes" if settings.processes else "threads",
            time.perf_counter() - started,
        )
    return cluster


@atexit.register
def close_local_clusters() -> None:
    """Stop the LocalClusters this process started (also run at exit)."""
    while _LOCAL:
        _, cluster = _LOCAL.popitem()
        cluster.close()


@contextmanager
def dask_client(settings: DaskConfig) -> Iterator[Client]:
    """A client of the configured cluster: this process' LocalCluster (started on first use)
    when ``settings.address`` is ``"local"``, else the running scheduler at that address."""
    if settings.address == "local":
        with Client(_local_cluster(settings)) as client:
            yield client
        return
    try:
        client = Client(settings.address, timeout="30s")
    except OSError as error:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {settings.address!r} (config.dask.address): "
            f"{error}"
        ) from error
    with client:
        yield client


def shard_count(settings: DaskConfig, client: Client) -> int:
    """``settings.shards``, else two per worker thread of the cluster (at least one)."""
    if settings.shards is not None:
        return settings.shards
    return max(1, 2 * sum(client.nthreads().values()))


def fill_cache_sharded(
    store: Store, experts: list[Expert], windows: Windows, config: RetrainConfig
) -> list[PrecomputeStats]:
    """``training_data.fill_cache`` over ``config.dask``: one ``PrecomputeStats`` per expert.

    ``computed`` counts the windows the shards and this process computed together;
    ``seconds`` is the step's wall time (cluster start included).
    """
    assert config.dask is not None
    started = time.perf_counter()
    keys = [expert.cache_key for expert in experts]
    computed: dict[str, int] = {}
    with dask_client(config.dask) as client:
        shards = shard_count(config.dask, client)
        groups = (
            [(None, np.arange(len(windows)))]
            if windows.season_length is None
            else season_groups(windows.season_length)
        )
        futures = []
        for season, rows in groups:  # the experts differ per period: shards never mix them
            share = max(1, round(shards * len(rows) / len(windows)))
            for block in shard_contexts(windows.context[rows], share):
                futures.append(
                    client.submit(
                        fill_cache_shard, store.location, config, block, season, keys, pure=False
                    )
                )
        _log.info("expert cache: %d shard(s) on Dask", len(futures))
        for _, shard_stats in as_completed(futures, with_results=True):
            for stats in shard_stats:
                computed[stats.expert] = computed.get(stats.expert, 0) + stats.computed
    # Here: what no worker could build (trained experts, experts handed in by the caller);
    # for the rest this only confirms that every window is cached.
    rest = cache_windows(store, experts, windows, config, progress=False)
    seconds = time.perf_counter() - started
    merged = []
    for stats in rest:
        total = stats.computed + computed.get(stats.expert, 0)
        merged.append(
            PrecomputeStats(
                expert=stats.expert,
                windows=stats.windows,
                distinct=stats.distinct,
                already_cached=max(0, stats.distinct - total),
                computed=total,
                seconds=seconds,
            )
        )
    return merged


def forecast_sharded(
    store: Store, config: ForecastConfig, on_chunk: Callable[[int, int], None] | None = None
) -> ForecastRun:
    """``forecast.batch_forecast`` over ``config.dask``: the same rows, one partition."""
    assert config.dask is not None
    model = choose_model(store, config.model_version)
    run_id = config.run_id or new_run_id()
    series_ids = series_to_forecast(store, config)
    usage = dict.fromkeys(model.expert_keys, 0)
    n_rows = n_series = 0
    with dask_client(config.dask) as client:
        shards = min(shard_count(config.dask, client), max(1, len(series_ids)))
        blocks = [list(block) for block in np.array_split(np.asarray(series_ids, object), shards)]
        futures = {
            client.submit(
                forecast_shard,
                store.location,
                model.model_version,
                block,
                run_id,
                config.chunk_size,
                config.device,
                pure=False,
            ): index
            for index, block in enumerate(blocks)
            if block
        }
        _log.info("batch forecast: %d series in %d shard(s) on Dask", len(series_ids), len(futures))
        with store.rewrite_partition("forecasts", {"run_id": run_id}) as write:
            for future, tables in as_completed(list(futures), with_results=True):
                shard = futures[future]
                for part, rows in enumerate(tables):
                    write(f"shard-{shard:05d}-{part:06d}", rows)
                    n_rows += rows.num_rows
                    n_series += _series_in(rows)
                    count_usage(rows, usage)
                future.release()  # the rows are written: let the cluster forget them
                if on_chunk is not None:
                    on_chunk(n_series, len(series_ids))
    return ForecastRun(run_id, model.model_version, n_series, n_rows, usage)


def _series_in(rows: pa.Table) -> int:
    return len(set(rows.column("series_id").to_pylist()))
