"""The store on object storage, against a real S3 API server (moto's, on 127.0.0.1).

Nothing of ours is mocked: the store talks HTTP to the server through s3fs, DuckDB reads
the parts through the same filesystem, and the writer lease is a real conditional PUT.
Writer exclusion, a stalled writer and a killed one run in real subprocesses.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
pytest.importorskip("moto.server", reason="moto[server] is not installed")

from storage import objectstore  # noqa: E402
from storage.cache import CachedModel, read_forecasts, write_forecasts  # noqa: E402
from storage.ingest import ingest_jsonl  # noqa: E402
from storage.registry import (  # noqa: E402
    RegistryError,
    champion,
    promote,
    read_verified_artifact,
    register_model,
)
from storage.schemas import TABLE_SCHEMAS  # noqa: E402
from storage.series import load_series  # noqa: E402
from storage.sql import ReadOnlyViolation, query  # noqa: E402
from storage.store import LeaseLost, LocalOnly, Store, StoreBusy, StoreNotFound  # noqa: E402

# A real server and subprocesses: about 40 s on a quiet 2-core machine.
pytestmark = pytest.mark.slow

_BUCKET = "moe-test"
_REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server in its own process on a free loopback port; the AWS settings that
    point at it. (Its own process: in-process, it would compete with the test for the GIL.)"""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    objectstore._FILESYSTEMS.clear()  # a filesystem made before now would miss the endpoint
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError as error:
                if server.poll() is not None or time.monotonic() > deadline:
                    message = f"moto server did not start (exit {server.poll()})"
                    raise RuntimeError(message) from error
                time.sleep(0.1)
        objectstore.object_filesystem().mkdir(_BUCKET)
        yield settings
    finally:
        objectstore._FILESYSTEMS.clear()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def location(s3_server: dict[str, str]) -> str:
    """A fresh, empty store prefix in the test bucket."""
    return f"s3://{_BUCKET}/stores/{uuid.uuid4().hex[:10]}"


def _jsonl(path: Path, n: int, bad_lines: int = 0, offset: float = 0.0) -> Path:
    rng = np.random.default_rng(0)
    lines = [
        json.dumps({"series_id": f"s{i:03d}", "sequence": (rng.random(12) + offset).tolist()})
        for i in range(n)
    ]
    lines += ['{"series_id": "bad", "sequence": "nope"}'] * bad_lines
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def _wave_jsonl(path: Path, seed: int) -> Path:
    """12 noisy sine series of 48 points, one JSON record per line."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for i in range(12):
            values = (10 + np.sin(np.arange(48) / 2) + rng.random(48)).round(3).tolist()
            handle.write(json.dumps({"series_id": f"s{i:02d}", "sequence": values}) + "\n")
    return path


def _objects(location: str) -> list[str]:
    fs = objectstore.object_filesystem()
    return sorted(fs.find(location.removeprefix("s3://")))


def _forecast_rows(run_id: str, series: list[str]) -> pa.Table:
    schema = TABLE_SCHEMAS["forecasts"]
    n = len(series)
    columns = {field.name: pa.nulls(n, field.type) for field in schema}
    columns["run_id"] = pa.array([run_id] * n)
    columns["series_id"] = pa.array(series)
    columns["step"] = pa.array([1] * n, schema.field("step").type)
    return pa.table(columns)


def test_ingest_views_cache_registry_on_s3(location: str, tmp_path: Path) -> None:
    """An s3:// store does what a folder does: ingest, views, sql, cache, registry, swaps."""
    store = Store.open(location)
    assert store.remote and store.location == location
    with pytest.raises(LocalOnly, match="object storage"):
        _ = store.root
    report = ingest_jsonl(store, _jsonl(tmp_path / "a.jsonl.gz", 30, bad_lines=2), chunk_lines=7)
    assert (report.accepted, report.rejected, report.new_series) == (30, 2, 30)
    again = ingest_jsonl(store, tmp_path / "a.jsonl.gz", chunk_lines=5)
    assert (again.unchanged, again.new_series, again.rejected) == (30, 0, 2)
    reopened = Store.open_existing(location)
    counts = query(
        reopened,
        "SELECT (SELECT count(*) FROM series) AS s, (SELECT count(*) FROM ingest_rejects) AS r",
    )
    assert counts.to_pylist() == [{"s": 30, "r": 2}]
    loaded = load_series(reopened, ["s003", "s010"])
    assert loaded.series_id == ["s003", "s010"] and loaded.values[0].shape == (12,)
    with pytest.raises(ReadOnlyViolation):
        query(reopened, f"SELECT * FROM read_parquet('{location}/tables/series_versions/*')")
    # The sandbox alone: a file in the bucket that is not a listed part cannot be read.
    objectstore.object_filesystem().pipe_file(f"{location}/secret.csv", b"a\n1\n")
    from storage.sql import readonly_connection

    connection = readonly_connection(reopened)
    try:
        with pytest.raises(Exception, match="disabled by configuration|Permission"):
            connection.sql(f"SELECT * FROM read_csv('{location}/secret.csv')").fetchall()
    finally:
        connection.close()

    model = CachedModel("naive", "naive-v1", input_length=12, pred_length=3)
    point = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_forecasts(reopened, model, ["h0", "h1", "h2", "h3"], point, None)
    write_forecasts(reopened, model, ["h3", "h4"], point[:2] + 100, None)  # h3 is kept once
    points, _, found = read_forecasts(reopened, [model], ["h4", "h0", "zz"], None)
    assert found[:, 0].tolist() == [True, True, False]
    np.testing.assert_array_equal(points[0, 0], point[1] + 100)
    np.testing.assert_array_equal(points[1, 0], point[0])
    assert query(reopened, "SELECT count(*) AS n FROM expert_forecasts")["n"][0].as_py() == 5

    artifact = tmp_path / "gate.pt"
    artifact.write_bytes(b"gate weights" * 100)
    version = register_model(
        reopened,
        artifact,
        gate_kind="linear",
        expert_keys=["a", "b"],
        input_length=12,
        pred_length=3,
        train_windows=10,
        backtest_mase=0.9,
        metrics={},
    )
    promote(reopened, version, "first")
    best = champion(reopened)
    assert best is not None and best.artifact_path == f"{location}/models/{version}.pt"
    assert read_verified_artifact(reopened, best) == artifact.read_bytes()
    objectstore.object_filesystem().pipe_file(best.artifact_path, b"tampered")
    with pytest.raises(RegistryError, match="changed on disk"):
        read_verified_artifact(reopened, best)

    # A rerun of a forecast run replaces its partition: old parts the new set lacks go.
    for parts in ({"chunk-0": ["s001", "s002"], "chunk-1": ["s003"]}, {"chunk-0": ["s004"]}):
        with reopened.rewrite_partition("forecasts", {"run_id": "r1"}) as write:
            for name, series in parts.items():
                write(name, _forecast_rows("r1", series))
    rows = query(reopened, "SELECT series_id FROM forecasts ORDER BY series_id")
    assert rows["series_id"].to_pylist() == ["s004"]
    with pytest.raises(LocalOnly, match="catalog.duckdb"):
        reopened.write_catalog()
    assert not [key for key in _objects(location) if key.endswith("writer.lock")]


def test_missing_store_and_bad_locations(s3_server: dict[str, str]) -> None:
    """Read commands on an empty prefix say no store; malformed s3 URLs are refused."""
    with pytest.raises(StoreNotFound, match="no store at s3://"):
        Store.open_existing(f"s3://{_BUCKET}/nothing-here")
    assert _objects(f"s3://{_BUCKET}/nothing-here") == []  # nothing was created
    for bad in ("s3://", "s3:///prefix", "s3://b/../x"):
        with pytest.raises(ValueError, match="s3://"):
            Store.open(bad)


def test_failed_write_publishes_nothing(location: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that dies halfway leaves no object, and readers see the table as before."""
    store = Store.open(location)
    store.write_part("model_events", "first", _event("first"))
    before = _objects(location)
    real_write = pq.write_table

    def dies_halfway(table: pa.Table, where: object, **kwargs: object) -> None:
        real_write(table, where, **kwargs)  # the whole file, then cut it and fail
        size = os.path.getsize(str(where))
        with open(str(where), "r+b") as handle:
            handle.truncate(size // 2)
        raise OSError("disk full (injected)")

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(OSError, match="injected"):
        store.write_part("model_events", "second", _event("second"))
    monkeypatch.undo()
    assert _objects(location) == before
    assert query(store, "SELECT model_version FROM model_events")["model_version"].to_pylist() == [
        "first"
    ]
    leftovers = [p for p in Path(store.scratch_dir()).glob(f"{os.getpid()}-*.parquet")]
    assert leftovers == []


def _event(version: str) -> pa.Table:
    return pa.table(
        {
            "model_version": [version],
            "event": ["registered"],
            "event_at": pa.array([0], pa.timestamp("us", tz="UTC")),
            "reason": ["test"],
        }
    )


def test_readers_during_writes_see_whole_parts(location: str, tmp_path: Path) -> None:
    """Readers polling while an ingest publishes 10 parts always read whole parts."""
    store = Store.open(location)
    path = _jsonl(tmp_path / "b.jsonl.gz", 60)
    seen: list[int] = []
    errors: list[BaseException] = []
    done, reading = threading.Event(), threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                n = query(store, "SELECT count(*) AS n FROM series")["n"][0].as_py()
                seen.append(n)
            except BaseException as error:  # any error is a reader seeing a bad state
                errors.append(error)
                return
            finally:
                reading.set()

    reader = threading.Thread(target=read)
    reader.start()
    reading.wait(60)  # the reader is under way before the first part is published
    try:
        ingest_jsonl(store, path, chunk_lines=6)
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert seen and all(n % 6 == 0 for n in seen), seen  # whole parts of 6 series only
    assert query(store, "SELECT count(*) AS n FROM series")["n"][0].as_py() == 60


_HOLDER = """
import sys, time
from storage.store import Store
store = Store.open(sys.argv[1])
with store.writer():
    print("held", flush=True)
    sys.stdin.readline()
    import pyarrow as pa
    try:
        store.write_part("model_events", "late", pa.table({
            "model_version": ["late"], "event": ["registered"],
            "event_at": pa.array([0], pa.timestamp("us", tz="UTC")), "reason": ["x"]}))
    except Exception as error:
        print(type(error).__name__, flush=True)
        sys.exit(3)
print("wrote", flush=True)
"""


def _holder(location: str, settings: dict[str, str], lease_s: float) -> subprocess.Popen[str]:
    env = dict(os.environ, **settings, PYTHONPATH=str(_REPO))
    env[objectstore.LEASE_ENV_VAR] = str(lease_s)
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, location],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "held"
    return process


def test_writer_exclusion_across_processes(location: str, s3_server: dict[str, str]) -> None:
    """A live holder keeps the store past its lease (renewals); once killed -9, the next
    writer gets it when the lease ends."""
    store = Store.open(location)
    holder = _holder(location, s3_server, lease_s=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(StoreBusy, match=f"pid {holder.pid}"):
            with store.writer(timeout=2.0):  # twice the lease: the holder renews it
                pass
        assert time.monotonic() - started >= 2.0
    finally:
        holder.kill()
        holder.wait()
    started = time.monotonic()
    with store.writer(timeout=10):
        store.write_part("model_events", "after", _event("after"))
    assert time.monotonic() - started < 5
    versions = query(store, "SELECT model_version FROM model_events")
    assert versions["model_version"].to_pylist() == ["after"]


def test_stalled_writer_loses_its_lease_and_publishes_nothing(
    location: str, s3_server: dict[str, str]
) -> None:
    """A writer frozen past its lease is replaced, and on waking cannot publish."""
    store = Store.open(location)
    holder = _holder(location, s3_server, lease_s=1.0)
    try:
        os.kill(holder.pid, signal.SIGSTOP)  # a real stall: no heartbeat, no progress
        started = time.monotonic()
        with store.writer(timeout=10):
            waited = time.monotonic() - started
            store.write_part("model_events", "taker", _event("taker"))
        assert 0.2 < waited < 5
        os.kill(holder.pid, signal.SIGCONT)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == LeaseLost.__name__
        assert holder.wait(timeout=30) == 3
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGCONT)
            holder.kill()
    versions = query(store, "SELECT model_version FROM model_events")
    assert versions["model_version"].to_pylist() == ["taker"]


def test_part_replaced_after_listing_is_never_read_mixed(location: str) -> None:
    """A part overwritten after a reader listed it fails that read (ETag check), and
    ``query`` lists again and returns the new rows, never bytes of both versions."""
    from storage.sql import readonly_connection

    store = Store.open(location)
    store.write_part("model_events", "run", _event("old"))
    connection = readonly_connection(store)  # lists the part: its size and ETag now
    try:
        store.write_part("model_events", "run", _event("a-longer-new-version"))
        with pytest.raises((OSError, duckdb.Error), match="no longer exists"):
            connection.sql("SELECT model_version FROM model_events").fetchall()
    finally:
        connection.close()
    rows = query(store, "SELECT model_version FROM model_events")
    assert rows["model_version"].to_pylist() == ["a-longer-new-version"]


def test_retrain_forecast_evaluate_jobs_on_s3(location: str, tmp_path: Path) -> None:
    """Guards the jobs on object storage: the retrain outline (windows, expert cache, gate,
    backtest, registry, forecast after promotion), a batch forecast and evaluate all run
    against an s3:// store and leave their rows there, nothing under a local folder."""
    from moe.experts.fake import fake_trio
    from pipeline.config import EvaluateConfig, ForecastConfig, RetrainConfig
    from pipeline.evaluate import evaluate_forecasts
    from pipeline.forecast import batch_forecast
    from pipeline.retrain import retrain
    from storage.retention import expire_forecast_runs

    path = _wave_jsonl(tmp_path / "series.jsonl", seed=1)
    store = Store.open(location)
    config = RetrainConfig.model_validate(
        {
            "jsonl_paths": [str(path)],
            "experts": ["seasonal_naive", "autoets", "autotheta"],
            "input_length": 24,
            "pred_length": 6,
            "season_length": 1,
            "max_windows_per_series": 3,
            "train": {"epochs": 2, "batch_size": 32},
        }
    )
    result = retrain(store, config, experts=fake_trio())
    assert result.promoted and result.forecast is not None
    assert result.artifact_path.startswith(location)
    run = batch_forecast(store, ForecastConfig(run_id="nightly"), experts=fake_trio())
    assert (run.n_series, run.n_rows) == (12, 12 * 6)
    counts = query(store, "SELECT run_id, count(*) AS n FROM forecasts GROUP BY run_id")
    assert dict(zip(*counts.to_pydict().values(), strict=True))["nightly"] == 12 * 6
    evaluate_forecasts(store, EvaluateConfig())  # no actuals yet: scores nothing, no error
    assert any("/tables/forecasts/" in key for key in _objects(location))
    # retention on S3: the retrain's own forecast run is superseded by "nightly" and goes
    report = expire_forecast_runs(store, timedelta(0), keep_runs=1)
    assert report.dropped == [result.forecast.run_id]
    runs = query(store, "SELECT DISTINCT run_id FROM forecasts").column(0).to_pylist()
    assert runs == ["nightly"]
    assert not any(f"run_id={result.forecast.run_id}" in key for key in _objects(location))


def test_trained_expert_on_s3(location: str, tmp_path: Path) -> None:
    """Guards trained experts on object storage: the retrain publishes the ``global_trees``
    checkpoint under ``<prefix>/experts/`` (no local store folder needed), and a batch
    forecast from a fresh ``Store`` builds it from there, checked against the model file's
    SHA-256 (the model file names the object, not a local scratch path)."""
    from pipeline.config import ForecastConfig, RetrainConfig
    from pipeline.forecast import batch_forecast
    from pipeline.models import load_verified_artifact
    from pipeline.retrain import retrain

    path = _wave_jsonl(tmp_path / "series.jsonl", seed=2)
    config = RetrainConfig.model_validate(
        {
            "jsonl_paths": [str(path)],
            "experts": ["seasonal_naive", "global_trees"],
            "input_length": 24,
            "pred_length": 6,
            "season_length": 1,
            "max_windows_per_series": 3,
            "global_expert": {"tree_rounds": 5},
            "forecast_after": False,
        }
    )
    result = retrain(Store.open(location), config)
    assert result.promoted, result.reason
    (published,) = [key for key in _objects(location) if "/experts/global_trees-" in key]
    store = Store.open(location)
    model = champion(store)
    assert model is not None
    entry = load_verified_artifact(store, model).experts[1]
    assert entry["config"]["checkpoint"] == f"s3://{published}"
    assert entry["checkpoint_sha256"] is not None
    run = batch_forecast(store, ForecastConfig())
    assert (run.n_series, run.n_rows) == (12, 12 * 6)


def test_appends_and_compaction_on_s3(location: str, tmp_path: Path) -> None:
    """Guards appends and `moe store compact` on object storage: a daily append stores one
    value per series, compaction publishes one part and deletes the old objects, and a
    reader querying meanwhile always gets every row once."""
    from storage.compaction import compact_store

    store = Store.open(location)
    rows = [{"series_id": f"s{i}", "sequence": [float(i)] * 5} for i in range(8)]
    for day in range(4):
        path = tmp_path / f"day{day}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        ingest_jsonl(store, path)
        rows = [{**r, "sequence": [*r["sequence"], float(day)]} for r in rows]  # type: ignore[list-item]
    stored = sum(
        len(v)
        for p in store.part_locations("series_versions")
        for v in store.read_part(p, ["values"]).column("values").to_pylist()
    )
    assert stored == 8 * 5 + 8 * 3  # appends: one new point each day
    expected = query(store, "SELECT * FROM series_versions ORDER BY ALL").to_pylist()
    assert {len(r["values"]) for r in expected} == {5, 6, 7, 8}
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(
                    query(store, "SELECT count(*) FROM series_versions").column(0)[0].as_py()
                )
            except BaseException as error:  # noqa: BLE001 - the test reports any failure
                errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        reports = {r.table: r for r in compact_store(store)}
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:1]
    assert set(seen) == {32}
    assert reports["series_versions"].parts_before == 4
    assert len(store.part_locations("series_versions")) == 2  # compacted + placeholder
    assert query(store, "SELECT * FROM series_versions ORDER BY ALL").to_pylist() == expected
    assert len(load_series(store)) == 8
