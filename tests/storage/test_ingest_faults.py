"""Ingest under faults and abuse: truncated gzip, bad Unicode, pipes, concurrency, kill -9."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.commands import main
from storage import IngestError, Store, ingest_jsonl
from storage.records import LineError, SeriesRecord, parse_line
from storage.sql import query

REPO = Path(__file__).resolve().parents[2]


def _lines(count: int, bad_every: int = 0) -> list[bytes]:
    lines = []
    for index in range(count):
        if bad_every and index % bad_every == 0:
            lines.append(b'{"series_id": "bad%d", "sequence": "x"}' % index)
        else:
            record = {"series_id": f"s{index}", "sequence": [index, index + 1.5, 2.0]}
            lines.append(json.dumps(record).encode())
    return lines


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _scalar(store: Store, sql: str, parameters: list[object] | None = None) -> object:
    return query(store, sql, parameters).column(0)[0].as_py()


def _exact(store: Store) -> tuple[object, ...]:
    """(versions, series, rejects, distinct (id, hash), distinct reject lines)."""
    return tuple(
        query(
            store,
            "SELECT (SELECT count(*) FROM series_versions), (SELECT count(*) FROM series), "
            "(SELECT count(*) FROM ingest_rejects), "
            "(SELECT count(DISTINCT (series_id, content_hash)) FROM series_versions), "
            "(SELECT count(DISTINCT (file_sha256, line_number)) FROM ingest_rejects)",
        )
        .to_pylist()[0]
        .values()
    )


def test_truncated_gzip_is_recorded_partial_and_rerun_completes(
    store: Store, tmp_path: Path
) -> None:
    """A gzip cut short keeps the rows before the cut, records 'partial'; a rerun completes."""
    full = gzip.compress(b"\n".join(_lines(3000)) + b"\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(IngestError, match="partial"):
        ingest_jsonl(store, cut, chunk_lines=500)
    status, error = query(store, "SELECT status, error FROM ingest_runs").to_pylist()[0].values()
    assert status == "partial" and "cannot read" in str(error)
    stored = _scalar(store, "SELECT count(*) FROM series")
    lines_read = _scalar(store, "SELECT lines_read FROM ingest_runs")
    assert 0 < stored == lines_read < 3000  # what was read is stored and counted, no more
    whole = tmp_path / "cut.jsonl.gz"
    whole.write_bytes(full)
    report = ingest_jsonl(store, whole, chunk_lines=700)
    assert report.status == "complete" and report.unchanged == stored
    assert _exact(store) == (3000, 3000, 0, 3000, 0)


def test_lone_surrogate_rejects_only_its_line(store: Store, tmp_path: Path) -> None:
    """A lone surrogate escape anywhere rejects that line; earlier and later lines are stored."""
    lines = _lines(30)
    lines[10] = b'{"series_id": "\\udc80", "sequence": [1]}'
    lines[20] = b'{"sequence": [1], "note": {"x": ["\\ud800"]}}'
    report = ingest_jsonl(_write_store(store), _write(tmp_path / "u.jsonl", lines), chunk_lines=4)
    assert (report.accepted, report.rejected) == (28, 2)
    reasons = query(store, "SELECT line_number, field, reason FROM ingest_rejects ORDER BY 1")
    rows = reasons.to_pylist()
    assert [(r["line_number"], r["field"]) for r in rows] == [(11, "series_id"), (21, "note.x")]
    assert all("lone surrogate" in r["reason"] for r in rows)


def _write_store(store: Store) -> Store:
    return store


def test_integer_id_beyond_64_bits_is_kept_exactly(store: Store, tmp_path: Path) -> None:
    """An integer series_id above 2**64 is stored exactly, not rejected as 'got float'."""
    big = 2**64 + 1
    path = tmp_path / "big.jsonl"
    path.write_text(f'{{"series_id": {big}, "sequence": [1, 2]}}\n')
    report = ingest_jsonl(store, path)
    assert report.accepted == 1
    assert _scalar(store, "SELECT series_id FROM series") == str(big)


@pytest.mark.parametrize("sizes", [(1, 7, 1000), (3, 3, 2), (1000, 1, 5)])
def test_rejects_idempotent_whatever_the_chunk_size(
    store: Store, tmp_path: Path, sizes: tuple[int, ...]
) -> None:
    """Re-ingesting with other --chunk-lines adds no reject twice (was doubled)."""
    path = _write(tmp_path / "r.jsonl", _lines(40, bad_every=3))
    for size in sizes:
        report = ingest_jsonl(store, path, chunk_lines=size)
        assert report.rejected == 14
    assert _exact(store) == (26, 26, 14, 26, 14)


def test_named_pipe_streams_once(store: Store, tmp_path: Path) -> None:
    """A FIFO is read once as it arrives: no hang, no 'empty file'."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    payload = b"\n".join(_lines(50)) + b"\n"

    def feed() -> None:
        with open(fifo, "wb") as handle:
            for start in range(0, len(payload), 100):
                handle.write(payload[start : start + 100])
                handle.flush()

    writer = threading.Thread(target=feed)
    writer.start()
    report = ingest_jsonl(store, fifo, chunk_lines=8)
    writer.join(timeout=10)
    assert (report.lines_read, report.accepted) == (50, 50)
    assert _scalar(store, "SELECT min(series_id) FROM series") == "s0"
    assert list(store.tmp_dir.iterdir()) == []  # the spool file is gone


def test_reject_hint_returns_the_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The '... and N more: moe sql ...' hint printed on a re-ingest returns every reject."""
    path = _write(tmp_path / "many.jsonl", _lines(90, bad_every=2))  # 45 rejects
    root = tmp_path / "s"
    for _ in range(2):
        assert main(["--store", str(root), "ingest", str(path)]) == 0
        out = capsys.readouterr().out
    hint = next(line for line in out.splitlines() if "more: moe sql" in line)
    sql = hint.split('moe sql "', 1)[1].rsplit('"', 1)[0]
    assert query(Store.open_existing(root), sql).num_rows == 45


def test_stale_tmp_entries_are_cleaned_by_the_next_writer(store: Store, tmp_path: Path) -> None:
    """Part files and staging folders of dead writers, and empty partitions, are removed."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(dead.stdout)
    leftovers = [
        store.tmp_dir / f"{pid}-abc.parquet",
        store.tmp_dir / f"partition-{pid}-abc",
        store.tmp_dir / f"retired-{pid}-abc",
        store.tmp_dir / "retired-0123abc",
    ]
    for entry in leftovers:
        if entry.suffix:
            entry.write_bytes(b"x")
        else:
            entry.mkdir()
            (entry / "chunk-000000.parquet").write_bytes(b"x")
    mine = store.tmp_dir / f"{os.getpid()}-inflight.parquet"
    mine.write_bytes(b"x")
    empty_partition = store.table_dir("forecasts") / "run_id=killed"
    empty_partition.mkdir()
    ingest_jsonl(store, _write(tmp_path / "a.jsonl", _lines(2)))
    assert not any(entry.exists() for entry in leftovers)
    assert mine.exists() and not empty_partition.exists()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.text(max_size=30).map(str.encode),
            st.builds(
                lambda sid, seq: json.dumps({"series_id": sid, "sequence": seq}).encode(),
                st.one_of(st.text(max_size=8), st.integers(), st.none(), st.floats()),
                st.lists(
                    st.one_of(st.floats(allow_nan=True), st.integers(), st.none()), max_size=6
                ),
            ),
        ),
        max_size=25,
    ),
    st.integers(min_value=1, max_value=9),
)
def test_fuzzed_lines_are_accounted_and_stored_safely(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], chunk: int
) -> None:
    """Random lines never crash the ingest; read = blank + accepted + rejected, stored once."""
    root = tmp_path_factory.mktemp("fuzz")
    store = Store.open(root / "s")
    # A raw newline inside a fuzzed line would split it: keep one logical line per entry.
    cleaned = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in lines]
    path = _write(root / "f.jsonl", cleaned)
    for _ in range(2):
        report = ingest_jsonl(store, path, chunk_lines=chunk)
        assert report.lines_read == report.blank_lines + report.accepted + report.rejected
    versions, series, rejects, distinct_versions, distinct_rejects = _exact(store)
    assert versions == distinct_versions == series == report.accepted  # ids are unique here
    assert rejects == distinct_rejects == report.rejected
    # Everything stored reads back as valid text (no lone surrogates reached the store).
    texts = query(
        store, "SELECT series_id FROM series UNION ALL SELECT raw_line FROM ingest_rejects"
    )
    assert texts.num_rows == versions + rejects
    for line in cleaned:  # parse_line is total: a record or a reason, never an exception
        if line.strip():
            assert isinstance(parse_line(line), (LineError, SeriesRecord))


def _ingest_process(root: Path, path: Path, chunk: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "cli",
        "--store",
        str(root),
        "ingest",
        str(path),
        "--chunk-lines",
        str(chunk),
    ]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_concurrent_ingests_of_one_file_store_it_once(tmp_path: Path) -> None:
    """Two processes ingesting the same file at once: each series once, each reject once."""
    path = _write(tmp_path / "same.jsonl", _lines(2000, bad_every=50))
    for round_ in range(3):
        root = tmp_path / f"store{round_}"
        Store.open(root)
        first, second = _ingest_process(root, path, 100), _ingest_process(root, path, 300)
        assert (first.wait(timeout=120), second.wait(timeout=120)) == (0, 0)
        store = Store.open_existing(root)
        assert _exact(store) == (1960, 1960, 40, 1960, 40), f"round {round_}"
        statuses = query(store, "SELECT status FROM ingest_runs").column(0).to_pylist()
        assert statuses == ["complete", "complete"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_parts", [1, 3, 6])
def test_kill_at_points_of_ingest_then_rerun(tmp_path: Path, kill_after_parts: int) -> None:
    """kill -9 after k parts landed; a rerun with another chunk size gives exact rows."""
    path = _write(tmp_path / "k.jsonl", _lines(4000, bad_every=40))
    root = tmp_path / "s"
    store = Store.open(root)
    process = _ingest_process(root, path, 250)
    parts = store.table_dir("series_versions")
    deadline = time.monotonic() + 60
    while len(list(parts.glob("*-*.parquet"))) < kill_after_parts:
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    landed = _scalar(store, "SELECT count(*) FROM series")
    assert 0 < landed < 3900  # the kill landed midway
    assert query(store, "SELECT status FROM ingest_runs").column(0).to_pylist() == ["started"]
    report = ingest_jsonl(store, path, chunk_lines=333)
    assert report.new_series == 3900 - landed and report.rejected == 100
    assert _exact(store) == (3900, 3900, 100, 3900, 100)
    statuses = sorted(query(store, "SELECT status FROM ingest_runs").column(0).to_pylist())
    assert statuses == ["complete", "started"]
