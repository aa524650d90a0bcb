"""The fast parse and write path gives exactly the reference per-line rows and rejects."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import storage.ingest as ingest_module
from storage import Store, ingest_jsonl
from storage.records import LineError, SeriesRecord, _parse_checked, parse_line
from storage.sql import query

_F32_MAX = float(np.finfo(np.float32).max)

# Lines that take every branch of the fast path or send it to the checked path.
TRICKY: list[bytes] = [
    # well-formed, the fast path's business
    b'{"series_id": "a", "sequence": [1.5, -2, 3e2, 0, -0.0]}',
    b'{"sequence": [1, 2, 3]}',
    b'{"series_id": 42, "sequence": [1.0]}',
    b'{"series_id": -9223372036854775808, "sequence": [1.0]}',
    b'{"series_id": 18446744073709551615, "sequence": [1.0]}',
    b'{"series_id": null, "sequence": [1.0], "start": null, "freq": null}',
    b'{"series_id": "x", "sequence": [1.0], "start": "2024-01-01", "freq": "D"}',
    b'{"series_id": "x", "sequence": [1.0], "start": "2024-01-01T05:00:00+02:00", "freq": "W-MON"}',
    b'{"series_id": "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x93\x88", "sequence": [1.0]}',
    b'{"series_id": "\\u00e9\\ud83d\\udcc8", "sequence": [1.0]}',
    b'{"series_id": "a", "sequence": [1.0], "extra": {"nested": [true, false, null]}}',
    b'{"series_id": "a", "sequence": [9007199254740993, 1]}',
    b'{"series_id": "a", "sequence": [9223372036854775807, -9223372036854775808]}',
    b'{"series_id": "a", "sequence": [18446744073709551615, 1.5]}',
    b'{"series_id": "a", "sequence": [18446744073709551616]}',
    b'{"series_id": "a", "sequence": [3.4028234663852886e38, -3.4028234663852886e38]}',
    b'{"series_id": "a", "sequence": [3.4028234663852890e38]}',
    b'{"series_id": "a", "sequence": [1e308]}',
    b'{"series_id": "a", "sequence": [5e-324, 1e-400]}',
    b'  {"series_id": "a", "sequence": [1.0]}  ',
    b'{"sequence": [1.0], "sequence": [2.0, 3.0]}',
    b'{"series_id": "a", "series_id": "b", "sequence": [1.0]}',
    b'{"series_id": "' + b"i" * 256 + b'", "sequence": [1.0]}',
    b'{"series_id": "' + b"i" * 257 + b'", "sequence": [1.0]}',
    # missing values and special tokens
    b'{"series_id": "a", "sequence": [1.0, null, 3.0]}',
    b'{"series_id": "a", "sequence": [1.0, NaN, 3.0]}',
    b'{"series_id": "a", "sequence": [null, NaN]}',
    b'{"series_id": "a", "sequence": [1.0, Infinity]}',
    b'{"series_id": "a", "sequence": [-Infinity, 1.0]}',
    b'{"series_id": "a", "sequence": [1e400]}',
    b'{"series_id": "a", "sequence": [-1e39, 1]}',
    b'{"series_id": "a", "sequence": [' + b"1" * 400 + b"]}",
    # wrong types inside and around the sequence
    b'{"series_id": "a", "sequence": [true, 1.0]}',
    b'{"series_id": "a", "sequence": [1, false]}',
    b'{"series_id": "true", "sequence": [1.0]}',
    b'{"series_id": "a", "sequence": [1.0], "freq": "false"}',
    b'{"series_id": "a", "sequence": ["1.5"]}',
    b'{"series_id": "a", "sequence": [[1.0, 2.0]]}',
    b'{"series_id": "a", "sequence": [[1.0], [2.0]]}',
    b'{"series_id": "a", "sequence": [{"v": 1}]}',
    b'{"series_id": "a", "sequence": []}',
    b'{"series_id": "a", "sequence": "1,2,3"}',
    b'{"series_id": "a", "sequence": {"0": 1}}',
    b'{"series_id": "a", "sequence": null}',
    b'{"series_id": "a", "sequence": 1.5}',
    b'{"series_id": "a"}',
    b'{"series_id": 1.5, "sequence": [1.0]}',
    b'{"series_id": 2.0, "sequence": [1.0]}',
    b'{"series_id": 123456789012345678901234567890, "sequence": [1.0]}',
    b'{"series_id": true, "sequence": [1.0]}',
    b'{"series_id": ["a"], "sequence": [1.0]}',
    b'{"series_id": "", "sequence": [1.0]}',
    b'{"series_id": "   ", "sequence": [1.0]}',
    b'{"series_id": "a", "sequence": [1.0], "start": "yesterday"}',
    b'{"series_id": "a", "sequence": [1.0], "start": 20240101}',
    b'{"series_id": "a", "sequence": [1.0], "freq": "fortnightly"}',
    b'{"series_id": "a", "sequence": [1.0], "freq": 7}',
    b'{"series_id": "a", "sequence": [1.0], "start": "2024-13-01", "freq": "nope"}',
    b'{"series_id": 1.5, "sequence": [true]}',
    # not an object, not JSON, not UTF-8
    b"1",
    b"-2.5",
    b'"just a string"',
    b"null",
    b"true",
    b"[1.0, 2.0]",
    b"NaN",
    b"{}",
    b'{"sequence": [1, 2,,]}',
    b'{"sequence": [1.0]} trailing',
    b'{"sequence": [1.0]}{"sequence": [2.0]}',
    b"\xef\xbb\xbf" + b'{"sequence": [1.0]}',
    b'{"sequence": [1.0]}\r',
    b'{"series_id": "\xff\xfe", "sequence": [1.0]}',
    b'{"series_id": "\\udc80", "sequence": [1.0]}',
    b'{"series_id": "a", "sequence": [1.0], "note": "\\ud800"}',
    b"[" * 5000 + b"]" * 5000,
]


def _same(fast: SeriesRecord | LineError, reference: SeriesRecord | LineError) -> bool:
    if isinstance(reference, LineError):
        return fast == reference
    if not isinstance(fast, SeriesRecord):
        return False
    return (
        (fast.series_id, fast.n_missing, fast.start, fast.freq)
        == (reference.series_id, reference.n_missing, reference.start, reference.freq)
        and fast.values.dtype == reference.values.dtype == np.float64
        and fast.values.tobytes() == reference.values.tobytes()
    )


@pytest.mark.parametrize("raw", TRICKY, ids=range(len(TRICKY)))
def test_tricky_lines_match_the_checked_parser(raw: bytes) -> None:
    """parse_line's fast path accepts and rejects exactly as the full per-line checks do."""
    assert _same(parse_line(raw), _parse_checked(raw))


def test_the_fast_path_is_taken_for_ordinary_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """A well-formed line never reaches the checked parser (else the speed-up is lost)."""

    def refuse(raw: bytes) -> None:
        raise AssertionError(f"checked parser called for {raw!r}")

    monkeypatch.setattr("storage.records._parse_checked", refuse)
    for raw in TRICKY[:10]:
        assert isinstance(parse_line(raw), SeriesRecord)


_ELEMENT = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-_F32_MAX * 1.01, max_value=_F32_MAX * 1.01),
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)
_FIELD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["D", "h", "W-MON", "MS", "2024-01-01", "2024-02-30", "true", " "]),
    st.lists(st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "series_id": _FIELD,
            "sequence": st.one_of(st.lists(_ELEMENT, max_size=8), _FIELD),
            "start": _FIELD,
            "freq": _FIELD,
            "other": _FIELD,
        },
    ),
    st.booleans(),
)
def test_random_objects_match_the_checked_parser(record: dict[str, object], spaced: bool) -> None:
    """Random objects (NaN/Infinity tokens, big ints, wrong types) parse as the checked path."""
    separators = (", ", ": ") if spaced else (",", ":")
    raw = json.dumps(record, separators=separators, allow_nan=True).encode()
    assert _same(parse_line(raw), _parse_checked(raw))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_random_bytes_match_the_checked_parser(raw: bytes) -> None:
    """Arbitrary bytes are rejected (or accepted) exactly as the checked path does."""
    if raw.strip():
        assert _same(parse_line(raw), _parse_checked(raw))


def _stored(store: Store) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    series = query(
        store,
        "SELECT series_id, content_hash, n_points, n_missing, start, freq, values, source_line "
        "FROM series_versions ORDER BY source_line",
    ).to_pylist()
    rejects = query(
        store,
        "SELECT line_number, field, reason, raw_line FROM ingest_rejects ORDER BY line_number",
    ).to_pylist()
    return series, rejects


def _nan_safe(rows: list[dict[str, object]]) -> str:
    return json.dumps(rows, default=str, allow_nan=True).replace("NaN", "nan")


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_ingest_stores_what_the_reference_path_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """A file of tricky lines (BOM, CRLF, blank lines, duplicates) stores identical rows."""
    lines = [b"\xef\xbb\xbf" + TRICKY[0], b"", b"   ", *TRICKY[1:], TRICKY[6], b"\t"]
    body = b"\r\n".join(lines[:12]) + b"\r\n" + b"\n".join(lines[12:]) + b"\n"
    body += b'{"series_id": "tail", "sequence": [7.0]}'  # no line ending at the end
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(body)

    fast_store = Store.open(tmp_path / "fast")
    fast = ingest_jsonl(fast_store, path, chunk_lines=chunk)
    monkeypatch.setattr(ingest_module, "parse_line", _parse_checked)
    reference_store = Store.open(tmp_path / "reference")
    reference = ingest_jsonl(reference_store, path, chunk_lines=chunk)

    counts = ("lines_read", "blank_lines", "accepted", "new_series", "rejected")
    assert [getattr(fast, name) for name in counts] == [getattr(reference, name) for name in counts]
    assert fast.rejects == reference.rejects and fast.accepted > 10 and fast.rejected > 40
    fast_series, fast_rejects = _stored(fast_store)
    reference_series, reference_rejects = _stored(reference_store)
    assert _nan_safe(fast_series) == _nan_safe(reference_series)
    assert fast_rejects == reference_rejects


def test_values_are_stored_byte_split_and_read_back_exactly(store: Store, tmp_path: Path) -> None:
    """Series parts encode values BYTE_STREAM_SPLIT; every float and missing value survives."""
    rng = np.random.default_rng(1)
    expected = []
    with open(tmp_path / "f.jsonl", "w") as handle:
        for index in range(50):
            values: list[float | None] = rng.normal(size=index + 1).tolist()
            values[0] = None if index % 3 == 1 else values[0]
            expected.append(values)
            handle.write(json.dumps({"series_id": f"s{index}", "sequence": values}) + "\n")
    ingest_jsonl(store, tmp_path / "f.jsonl", chunk_lines=20)
    parts = sorted(store.table_dir("series_versions").glob("*.parquet"))
    assert parts
    for part in parts:
        metadata = pq.ParquetFile(part).metadata
        if metadata.num_rows == 0:
            continue  # the table's empty placeholder part
        names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
        column = metadata.row_group(0).column(names.index("values.list.element"))
        assert "BYTE_STREAM_SPLIT" in column.encodings
    rows = query(store, "SELECT series_id, values FROM series ORDER BY n_points").to_pylist()
    stored = [row["values"] for row in rows]
    assert len(stored) == len(expected)
    for got, want in zip(stored, expected, strict=True):
        assert [None if v is None or math.isnan(v) else v for v in got] == want


def _lines_file(path: Path, count: int) -> Path:
    rows = (json.dumps({"series_id": f"s{i}", "sequence": [i, i + 0.5]}) for i in range(count))
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_chunk_is_one_part_of_several_row_groups(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of a chunk become row groups of one part per chunk, in line order."""
    monkeypatch.setattr(ingest_module, "_BATCH_LINES", 3)
    report = ingest_jsonl(store, _lines_file(tmp_path / "f.jsonl", 17), chunk_lines=10)
    assert report.accepted == 17
    parts = [
        pq.ParquetFile(part).metadata
        for part in sorted(store.table_dir("series_versions").glob(f"{report.ingest_id}-*"))
    ]
    assert [meta.num_rows for meta in parts] == [10, 7]
    assert [meta.num_row_groups for meta in parts] == [4, 3]  # 3+3+3+1 and 3+3+1
    lines = query(store, "SELECT source_line FROM series_versions").column(0).to_pylist()
    assert sorted(lines) == list(range(1, 18))


def test_a_failed_batch_write_publishes_nothing_of_its_chunk(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write error mid-chunk leaves earlier chunks whole, no part of its chunk, no tmp file."""
    monkeypatch.setattr(ingest_module, "_BATCH_LINES", 2)
    path = _lines_file(tmp_path / "f.jsonl", 12)
    original = ingest_module.PartWriter.write
    calls = []

    def failing(self: object, data: object) -> None:
        calls.append(1)
        if len(calls) == 4:  # chunk 0 = batches 1-3; batch 4 is chunk 1's second batch
            raise OSError("disk full")
        original(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module.PartWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        ingest_jsonl(store, path, chunk_lines=5)
    stored = query(store, "SELECT source_line FROM series_versions").column(0).to_pylist()
    assert sorted(stored) == [1, 2, 3, 4, 5]  # chunk 0 only, whole
    runs = query(store, "SELECT status, file_sha256, lines_read FROM ingest_runs").to_pylist()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert runs == [{"status": "started", "file_sha256": digest, "lines_read": 0}]
    assert not [entry for entry in store.tmp_dir.iterdir() if entry.suffix == ".parquet"]
    monkeypatch.setattr(ingest_module.PartWriter, "write", original)
    rerun = ingest_jsonl(store, path, chunk_lines=5)
    assert (rerun.new_series, rerun.unchanged) == (7, 5)
    assert query(store, "SELECT count(*) FROM series").column(0)[0].as_py() == 12


_IMPORT_ORDER_PROBE = """
import sys
import storage.ingest as ingest
from storage import Store

store = Store.open(sys.argv[1])  # existing: opening it imports no pandas
assert "pandas" not in sys.modules, "precondition: pandas imported before the ingest"
seen = []
real = ingest.ThreadPoolExecutor


def recording(*args, **kwargs):
    seen.append("pandas.tseries.frequencies" in sys.modules)
    return real(*args, **kwargs)


ingest.ThreadPoolExecutor = recording
report = ingest.ingest_jsonl(store, sys.argv[2])
assert report.accepted == 3, report
print(seen)
"""


def test_pandas_is_imported_before_the_writer_thread_starts(tmp_path: Path) -> None:
    """Two threads importing pandas at once deadlocked an ingest (_DeadlockError)."""
    Store.open(tmp_path / "store")
    path = tmp_path / "f.jsonl"
    rows = [{"series_id": f"s{i}", "sequence": [1.0, 2.0], "freq": "D"} for i in range(3)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ORDER_PROBE, str(tmp_path / "store"), str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert out.stdout.strip() == "[True]"
