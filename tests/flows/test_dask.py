"""Sharded expert precompute on a Dask LocalCluster through prefect-dask."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect.exceptions import ParameterTypeError
from prefect_dask import DaskTaskRunner

from flows.sharded import precompute_sharded
from pipeline.config import RetrainConfig
from pipeline.precompute import load_cached, shard_contexts
from pipeline.training_data import build_experts_for, prepare_windows
from storage import Store
from storage.cache import window_hashes
from tests.flows.conftest import FAST_RETRAIN

SHARDS = 3


def test_shard_contexts_deduplicates_and_covers() -> None:
    """Every distinct window lands in exactly one shard (duplicates would be computed twice)."""
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    context = np.concatenate([rows, rows[:4]])  # 14 rows, 10 distinct
    blocks = shard_contexts(context, 4)
    hashes = [h for block in blocks for h in window_hashes(block)]
    assert len(blocks) == 4 and sorted(hashes) == sorted(set(window_hashes(rows)))
    assert len(shard_contexts(rows[:2], 5)) == 2  # never an empty shard
    with pytest.raises(ValueError, match="shards must be >= 1, got 0"):
        shard_contexts(rows, 0)


def test_sharded_flow_rejects_zero_shards() -> None:
    """The flow's run form refuses shards < 1 before any work (Prefect parameter validation)."""
    with pytest.raises(ParameterTypeError, match="shards"):
        precompute_sharded.validate_parameters({"shards": 0})


@pytest.mark.usefixtures("prefect_harness")
def test_sharded_precompute_on_dask_caches_each_window_once(
    tmp_path: Path, series_jsonl: Path
) -> None:
    """Shards run as Dask tasks and together cache every window exactly once per expert."""
    store = Store.open(tmp_path / "store")
    config = RetrainConfig.model_validate({**FAST_RETRAIN, "jsonl_paths": [str(series_jsonl)]})
    # Threads, not processes: worker processes would re-import torch/prefect (slow on 2 cores).
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        get_task_stream(client) as stream,
    ):
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        stats = precompute_sharded.with_options(task_runner=runner)(  # type: ignore[arg-type]
            config=config, store=str(store.root), shards=SHARDS
        )
    assert len(stream.data) == SHARDS  # each shard was a Dask task
    _, windows = prepare_windows(store, config)
    distinct = len(set(window_hashes(windows.context)))
    for expert in config.experts:
        computed = sum(s.computed for s in stats if s.expert == expert)
        assert computed == distinct, (expert, computed, distinct)
        # Part files are internals, not a view: read them directly (moe sql would refuse).
        with duckdb.connect() as connection:
            total, unique, parts = connection.execute(
                "SELECT count(*), count(DISTINCT window_hash), count(DISTINCT filename) "
                "FROM read_parquet($1, filename = true) WHERE expert = $2",
                [str(store.table_dir("expert_forecasts") / "*" / "*.parquet"), expert],
            ).fetchone()
        assert total == unique == distinct and parts == SHARDS, (expert, total, unique, parts)
    points, _ = load_cached(store, build_experts_for(config), windows.context, config.pred_length)
    assert points.shape == (len(windows), 3, config.pred_length) and not points.isnan().any()
