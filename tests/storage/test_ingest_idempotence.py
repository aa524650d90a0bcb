"""Re-ingest adds nothing, a kill -9 mid-ingest leaves a readable store, and values round-trip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from moe.data import rolling_windows
from moe.seed.data import TimeSeriesDataset, load_jsonl
from storage import Store, ingest_jsonl
from storage.sql import query

REPO = Path(__file__).resolve().parents[2]


def _write_series(path: Path, count: int, length: int, seed: int = 0) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    sequences = [rng.normal(100, 10, length).round(3).tolist() for _ in range(count)]
    with open(path, "w") as handle:
        for index, sequence in enumerate(sequences):
            handle.write(json.dumps({"series_id": f"s{index}", "sequence": sequence}) + "\n")
    return sequences


def _counts(store: Store) -> tuple[int, int, int]:
    row = query(
        store,
        "SELECT (SELECT count(*) FROM series_versions), (SELECT count(*) FROM series),"
        " (SELECT count(*) FROM ingest_rejects)",
    ).to_pylist()[0]
    return tuple(row.values())  # type: ignore[return-value]


def test_reingest_same_file_adds_nothing(store: Store, tmp_path: Path) -> None:
    """Ingesting the same file twice stores each series and each reject once."""
    path = tmp_path / "data.jsonl"
    _write_series(path, 30, 20)
    with open(path, "a") as handle:
        handle.write("not json\n")
    first = ingest_jsonl(store, path, chunk_lines=7)
    second = ingest_jsonl(store, path, chunk_lines=7)
    assert (first.new_series, first.rejected) == (30, 1)
    assert (second.new_series, second.unchanged, second.rejected) == (0, 30, 1)
    assert _counts(store) == (30, 30, 1)
    runs = query(store, "SELECT count(*) FROM ingest_runs").column(0).to_pylist()
    assert runs == [2]  # both calls are recorded, with their own counts


def test_roundtrip_jsonl_store_windows(store: Store, tmp_path: Path) -> None:
    """JSONL -> store -> windows returns exactly the input values, in order."""
    path = tmp_path / "data.jsonl"
    sequences = _write_series(path, 5, 12)
    ingest_jsonl(store, path)
    rows = query(store, "SELECT series_id, values FROM series ORDER BY source_line").to_pylist()
    assert [row["values"] for row in rows] == sequences
    windows = rolling_windows([row["values"] for row in rows], 4, 2, stride=1, holdout=1)
    first = windows.series_index == 0
    rebuilt = np.concatenate([windows.context[first][-1], windows.target[first][-1]])
    np.testing.assert_array_equal(rebuilt, np.asarray(sequences[0][:6], np.float32))
    assert load_jsonl(path) == sequences


def test_seed_two_series_example(tmp_path: Path) -> None:
    """The seed's example: input_length=4, pred_length=2 gives the seed's pair per series."""
    sequences = [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]]
    dataset = TimeSeriesDataset(sequences, input_length=4, pred_length=2)
    assert len(dataset) == 2
    inp, tgt = dataset[0]
    assert inp.tolist() == [1.0, 2.0, 3.0, 4.0] and tgt.tolist() == [5.0, 6.0]
    assert tuple(inp.shape) == (4,) and tuple(tgt.shape) == (2,)
    inp, tgt = dataset[1]
    assert inp.tolist() == [10.0, 20.0, 30.0, 40.0] and tgt.tolist() == [50.0, 60.0]
    assert len(TimeSeriesDataset([[1.0, 2.0, 3.0]], 4, 2)) == 0  # too short: left out


def test_kill_during_ingest_then_rerun(tmp_path: Path) -> None:
    """kill -9 mid-ingest leaves a readable store; a rerun completes without duplicates."""
    path = tmp_path / "big.jsonl"
    _write_series(path, 3000, 200)
    root = tmp_path / "store"
    store = Store.open(root)
    command = [
        sys.executable,
        "-m",
        "cli",
        "--store",
        str(root),
        "ingest",
        str(path),
        "--chunk-lines",
        "100",
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    parts = store.table_dir("series_versions")
    deadline = time.monotonic() + 60
    while len(list(parts.glob("*.parquet"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    landed, _, _ = _counts(store)  # readable right after the kill
    assert 0 < landed < 3000, "kill should land mid-ingest; make the file bigger"
    report = ingest_jsonl(store, path, chunk_lines=100)
    assert report.accepted == 3000 and report.unchanged == landed
    assert report.new_series == 3000 - landed
    assert _counts(store) == (3000, 3000, 0)


def test_windows_from_store_holdout_and_cap(store: Store, tmp_path: Path) -> None:
    """Store windows: newest first, capped per series, last one flagged as holdout."""
    from storage.series import load_series

    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"series_id": "a", "sequence": list(range(10))})
        + "\n"
        + json.dumps({"series_id": "b", "sequence": [1.0, None, 3.0, 4.0, 5.0, 6.0]})
        + "\n"
    )
    ingest_jsonl(store, path)
    series = load_series(store)
    windows = rolling_windows(series.values, 4, 2, stride=1, max_windows_per_series=3)
    assert series.series_id == ["a", "b"]
    assert windows.series_index.tolist() == [0, 0, 0, 1]
    assert windows.target[0].tolist() == [8.0, 9.0]  # newest window of "a" ends at the end
    assert windows.is_holdout.tolist() == [True, False, False, True]
    assert np.isnan(windows.context[3][1])  # a missing value stays NaN through the store
