"""The retrain's expert cache and the batch forecast sharded over a Dask LocalCluster
(``config.dask``) write the rows the in-process steps write."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from flows import jobs
from pipeline.config import DaskConfig, ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from pipeline.sharding import close_local_clusters
from storage import Store
from storage.sql import query
from tests.flows.conftest import FAST_RETRAIN

REPO = Path(__file__).resolve().parents[2]
# Threads, not processes: worker processes would re-import torch and recompile the
# statistical experts (tens of seconds on 2 cores); benchmarks/bench_sharding.py runs
# processes. Three shards on two workers: more shards than workers, as in production.
DASK = {"address": "local", "workers": 2, "processes": False, "shards": 3}
ROW_KEYS = ["series_id", "step", "expert_1", "expert_2", "timestamp"]
ROW_VALUES = ["point", "weight_1", "weight_2", "q10", "q50", "q90"]


@pytest.fixture(scope="module")
def local_dask() -> Iterator[None]:
    """This module's LocalCluster is stopped when its tests end, not at exit."""
    yield
    close_local_clusters()


def _cache_rows(store: Store) -> pa.Table:
    # Part files are internals, not a view: read them directly, sorted for comparison.
    with duckdb.connect() as connection:
        return connection.sql(
            "SELECT expert, window_hash, point FROM read_parquet($1, union_by_name = true) "
            "ORDER BY expert, window_hash",
            params=[str(store.table_dir("expert_forecasts") / "*" / "*.parquet")],
        ).to_arrow_table()


def _forecast_rows(store: Store, run_id: str) -> pa.Table:
    return query(
        store,
        f"SELECT {', '.join(ROW_KEYS + ROW_VALUES)} FROM forecasts WHERE run_id = $1 "
        "ORDER BY series_id, step",
        [run_id],
    )


def _assert_same_rows(first: pa.Table, second: pa.Table) -> None:
    assert first.num_rows == second.num_rows > 0
    for column in ROW_KEYS:
        assert first.column(column).to_pylist() == second.column(column).to_pylist(), column
    for column in ROW_VALUES:
        left = first.column(column).to_numpy(zero_copy_only=False).astype(float)
        right = second.column(column).to_numpy(zero_copy_only=False).astype(float)
        np.testing.assert_allclose(left, right, rtol=1e-5, err_msg=column, equal_nan=True)


@pytest.mark.usefixtures("local_dask")
def test_sharded_retrain_and_forecast_match_in_process(tmp_path: Path, series_jsonl: Path) -> None:
    """config.dask shards the cache and the forecast after a promotion, and both give the
    in-process rows (same cache entries, same forecasts: one row per series and step)."""
    base = {**FAST_RETRAIN, "jsonl_paths": [str(series_jsonl)]}
    plain_store, dask_store = Store.open(tmp_path / "plain"), Store.open(tmp_path / "dask")
    plain = retrain(plain_store, RetrainConfig.model_validate(base))
    sharded = retrain(dask_store, RetrainConfig.model_validate({**base, "dask": DASK}))
    assert plain.forecast is not None and sharded.forecast is not None
    distinct = {s.expert: s.distinct for s in plain.precompute}
    assert {s.expert: s.computed for s in sharded.precompute} == distinct
    plain_cache, dask_cache = _cache_rows(plain_store), _cache_rows(dask_store)
    assert plain_cache.num_rows == sum(distinct.values())
    assert plain_cache.column("window_hash").equals(dask_cache.column("window_hash"))
    _assert_same_rows(
        _forecast_rows(plain_store, plain.forecast.run_id),
        _forecast_rows(dask_store, sharded.forecast.run_id),
    )
    assert sharded.forecast.n_rows == 24 * 6 and sharded.forecast.n_series == 24
    assert sharded.forecast.expert_usage == plain.forecast.expert_usage


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, series_jsonl: Path) -> Store:
    """A store with a champion (retrained in-process, no forecast yet)."""
    store = Store.open(tmp_path_factory.mktemp("trained") / "store")
    config = {**FAST_RETRAIN, "jsonl_paths": [str(series_jsonl)], "forecast_after": False}
    retrain(store, RetrainConfig.model_validate(config))
    return store


@pytest.mark.usefixtures("local_dask")
def test_sharded_forecast_rerun_replaces_its_rows(trained: Store) -> None:
    """A sharded rerun of a run id replaces that run's rows (never duplicates them), and a
    selection of series forecasts just those."""
    store = trained
    plain = batch_forecast(store, ForecastConfig(run_id="plain"))
    for _ in range(2):
        run = batch_forecast(store, ForecastConfig(run_id="again", dask=DASK, chunk_size=5))
    assert (run.n_series, run.n_rows) == (24, 24 * 6)
    counts = query(
        store,
        "SELECT count(*), count(DISTINCT (series_id, step)) FROM forecasts WHERE run_id = $1",
        ["again"],
    ).to_pylist()
    assert counts == [{"count_star()": 144, 'count(DISTINCT "row"(series_id, step))': 144}]
    _assert_same_rows(_forecast_rows(store, plain.run_id), _forecast_rows(store, "again"))
    some = ["s000", "s003", "s007"]
    picked = batch_forecast(store, ForecastConfig(run_id="some", series_ids=some, dask=DASK))
    assert picked.n_series == 3
    ids = query(store, "SELECT DISTINCT series_id FROM forecasts WHERE run_id = 'some'")
    assert sorted(ids.column(0).to_pylist()) == some


@pytest.mark.usefixtures("prefect_harness", "local_dask")
def test_batch_forecast_flow_takes_the_dask_setting(trained: Store) -> None:
    """The deployed flow's run form carries config.dask and the flow shards with it."""
    result = jobs.batch_forecast(
        config=ForecastConfig.model_validate({"run_id": "flow", "dask": DASK}),
        store=str(trained.root),
    )
    assert result["rows"] == 24 * 6
    parts = trained.table_dir("forecasts").glob("run_id=flow/*.parquet")
    assert sorted(p.name for p in parts) == [f"shard-{i:05d}-000000.parquet" for i in range(3)]


def test_dask_setting_is_validated_and_in_the_run_forms() -> None:
    """The run forms (pydantic schema) offer config.dask; bad values are refused up front."""
    for model in (RetrainConfig, ForecastConfig):
        field = model.model_json_schema()["properties"]["dask"]
        assert field["default"] is None and "Dask" in field["description"]
    assert DaskConfig().address == "local" and DaskConfig().shards is None
    with pytest.raises(ValidationError, match="workers"):
        ForecastConfig.model_validate({"dask": {"workers": 0}})
    with pytest.raises(ValidationError, match="extra"):
        RetrainConfig.model_validate({"dask": {"adress": "tcp://x:8786"}})


def test_in_process_jobs_never_import_dask() -> None:
    """Without config.dask the pipeline does not import Dask (no cost, no dependency)."""
    code = (
        "import sys, pipeline.retrain, pipeline.forecast, pipeline.training_data; "
        "assert 'distributed' not in sys.modules and 'pipeline.sharding' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_serve_and_cli_pass_the_dask_setting(tmp_path: Path) -> None:
    """`moe serve --dask` makes config.dask the sharded deployments' default; `moe forecast`
    refuses --shards without --dask instead of ignoring it."""
    from cli.commands import main
    from flows.serve import deployments

    settings = DaskConfig(address="tcp://scheduler:8786", shards=8)
    by_name = {d.name: d for d in deployments(store=str(tmp_path), dask=settings)}
    for name in ("weekly-retrain", "daily-batch-forecast"):
        assert by_name[name].parameters["config"] == {"dask": settings.model_dump()}
    assert "config" not in by_name["daily-evaluate"].parameters
    assert all("config" not in d.parameters for d in deployments(store=str(tmp_path)))
    assert main(["--store", str(tmp_path), "forecast", "--shards", "2"]) != 0
