"""Each kind of bad input: a clear message naming file, line and field; good lines kept."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import pytest

from storage import IngestError, Store, ingest_jsonl
from storage.sql import query

GOOD = b'{"series_id": "good", "sequence": [1.0, 2.0, 3.0]}'


def _ingest(store: Store, tmp_path: Path, *lines: bytes, name: str = "data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ingest_jsonl(store, path)


def _only_reject(store: Store, tmp_path: Path, bad: bytes):
    """Ingest GOOD then ``bad``; return the reject of line 2, after checking the totals."""
    report = _ingest(store, tmp_path, GOOD, bad)
    assert report.lines_read == report.blank_lines + report.accepted + report.rejected
    assert (report.accepted, report.rejected) == (1, 1)
    stored = query(store, "SELECT series_id FROM series").column("series_id").to_pylist()
    assert stored == ["good"]  # the good line of the same file is kept
    rows = query(
        store, "SELECT line_number, field, reason, raw_line FROM ingest_rejects"
    ).to_pylist()
    assert len(rows) == 1 and rows[0]["line_number"] == 2
    rejected = report.rejects[0]
    assert str(tmp_path / "data.jsonl") in rejected.describe(report.source_file)
    return rows[0]


def test_invalid_json(store: Store, tmp_path: Path) -> None:
    """A line that is not JSON is rejected with 'invalid JSON' and its raw text kept."""
    row = _only_reject(store, tmp_path, b'{"sequence": [1, 2,,]}')
    assert row["field"] == "line" and "invalid JSON" in row["reason"]
    assert row["raw_line"] == '{"sequence": [1, 2,,]}'


def test_missing_sequence(store: Store, tmp_path: Path) -> None:
    """An object without 'sequence' names the missing field."""
    row = _only_reject(store, tmp_path, b'{"series_id": "x"}')
    assert row["field"] == "sequence" and "missing" in row["reason"]


def test_sequence_not_a_list(store: Store, tmp_path: Path) -> None:
    """'sequence' given as a string is rejected, saying what it got."""
    row = _only_reject(store, tmp_path, b'{"sequence": "1,2,3"}')
    assert row["field"] == "sequence" and "got a string" in row["reason"]


def test_not_an_object(store: Store, tmp_path: Path) -> None:
    """A bare JSON list instead of an object is rejected at line level."""
    row = _only_reject(store, tmp_path, b"[1, 2, 3]")
    assert row["field"] == "line" and "expected a JSON object" in row["reason"]


def test_empty_sequence(store: Store, tmp_path: Path) -> None:
    """An empty list has nothing to forecast from."""
    row = _only_reject(store, tmp_path, b'{"sequence": []}')
    assert row["reason"] == "empty list"


def test_boolean_in_sequence(store: Store, tmp_path: Path) -> None:
    """true/false are not numbers even though Python treats them as ints."""
    row = _only_reject(store, tmp_path, b'{"sequence": [1.0, true, 3.0]}')
    assert row["reason"] == "element 1 is a boolean (true), expected a number"


def test_string_in_sequence(store: Store, tmp_path: Path) -> None:
    """A numeric-looking string is still rejected, not silently converted."""
    row = _only_reject(store, tmp_path, b'{"sequence": [1.0, "2.5", 3.0]}')
    assert "element 1 is a string ('2.5')" in row["reason"]


def test_nested_list_in_sequence(store: Store, tmp_path: Path) -> None:
    """A list of lists (even rectangular) is rejected."""
    row = _only_reject(store, tmp_path, b'{"sequence": [[1.0, 2.0], [3.0, 4.0]]}')
    assert "element 0 is a nested list" in row["reason"]


def test_null_and_nan_are_kept_as_missing(store: Store, tmp_path: Path) -> None:
    """null and NaN tokens become missing values (SQL NULL), the series is accepted."""
    report = _ingest(store, tmp_path, b'{"series_id": "m", "sequence": [1.0, null, NaN, 4.0]}')
    assert (report.accepted, report.rejected) == (1, 0)
    row = query(store, "SELECT values, n_missing FROM series").to_pylist()[0]
    assert row == {"values": [1.0, None, None, 4.0], "n_missing": 2}


def test_all_missing_is_rejected(store: Store, tmp_path: Path) -> None:
    """A sequence with no observed value is rejected."""
    row = _only_reject(store, tmp_path, b'{"sequence": [null, NaN]}')
    assert "no observed value" in row["reason"]


@pytest.mark.parametrize("token", [b"Infinity", b"-Infinity", b"1e400", b"-5e39"])
def test_infinite_or_absurd_magnitude(store: Store, tmp_path: Path, token: bytes) -> None:
    """Infinity tokens, float64 overflow and values beyond float32 range are rejected."""
    row = _only_reject(store, tmp_path, b'{"sequence": [1.0, ' + token + b"]}")
    assert row["field"] == "sequence" and "element 1" in row["reason"]
    assert "beyond float32 range" in row["reason"]


def test_duplicate_series_id_within_file(store: Store, tmp_path: Path) -> None:
    """The second line with the same id is rejected, pointing at the first."""
    row = _only_reject(store, tmp_path, b'{"series_id": "good", "sequence": [9.0]}')
    assert row["field"] == "series_id"
    assert row["reason"] == "duplicate series_id 'good' (first at line 1)"


def test_duplicate_series_id_across_files(store: Store, tmp_path: Path) -> None:
    """Same id in another file: same content is unchanged, new content is a new version."""
    _ingest(store, tmp_path, GOOD, name="a.jsonl")
    same = _ingest(store, tmp_path, GOOD, name="b.jsonl")
    assert (same.unchanged, same.new_series, same.new_versions) == (1, 0, 0)
    changed = _ingest(store, tmp_path, b'{"series_id": "good", "sequence": [7.0]}', name="c.jsonl")
    assert (changed.unchanged, changed.new_versions) == (0, 1)
    rows = query(store, "SELECT version, values FROM series_versions ORDER BY version").to_pylist()
    assert rows == [{"version": 1, "values": [1.0, 2.0, 3.0]}, {"version": 2, "values": [7.0]}]
    latest = query(store, "SELECT values FROM series").column("values").to_pylist()
    assert latest == [[7.0]]


def test_bad_series_id_type(store: Store, tmp_path: Path) -> None:
    """A series_id that is an object is rejected on the series_id field."""
    row = _only_reject(store, tmp_path, b'{"series_id": {"a": 1}, "sequence": [1.0]}')
    assert row["field"] == "series_id"


def test_bad_start_and_freq(store: Store, tmp_path: Path) -> None:
    """start must be ISO 8601 and freq a pandas alias; each names its field."""
    report = _ingest(
        store,
        tmp_path,
        b'{"sequence": [1.0], "start": "yesterday"}',
        b'{"sequence": [1.0], "freq": "fortnightly"}',
        b'{"sequence": [1.0], "start": "2024-01-01", "freq": "MS"}',
    )
    assert [(r.line_number, r.field) for r in report.rejects] == [(1, "start"), (2, "freq")]
    assert report.accepted == 1


def test_freq_checks_say_nothing_on_stderr(store: Store, tmp_path: Path) -> None:
    """Older pandas aliases ('H', 'Q', 'A') are still accepted and a word that is no alias
    ('false') is rejected on its field, without pandas' deprecation warnings leaking out of
    the check (the reject record is what tells the user)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = _ingest(
            store,
            tmp_path,
            b'{"series_id": "h", "sequence": [1.0], "freq": "H"}',
            b'{"series_id": "q", "sequence": [1.0], "freq": "Q"}',
            b'{"series_id": "a", "sequence": [1.0], "freq": "A"}',
            b'{"series_id": "f", "sequence": [1.0], "freq": "false"}',
        )
    assert [(r.line_number, r.field) for r in report.rejects] == [(4, "freq")]
    assert report.accepted == 3


def test_blank_lines_are_counted_not_rejected(store: Store, tmp_path: Path) -> None:
    """Blank and whitespace-only lines are counted separately; totals still add up."""
    report = _ingest(store, tmp_path, b"", GOOD, b"   ", b"")
    assert (report.lines_read, report.blank_lines, report.accepted, report.rejected) == (4, 3, 1, 0)


def test_utf8_bom(store: Store, tmp_path: Path) -> None:
    """A UTF-8 byte order mark at the start of the file does not break the first line."""
    report = _ingest(store, tmp_path, b"\xef\xbb\xbf" + GOOD)
    assert (report.accepted, report.rejected) == (1, 0)


def test_windows_line_endings(store: Store, tmp_path: Path) -> None:
    """CRLF line endings are accepted and do not leak into values or ids."""
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(GOOD + b"\r\n" + b'{"series_id": "b", "sequence": [4]}\r\n')
    report = ingest_jsonl(store, path)
    assert (report.accepted, report.rejected) == (2, 0)
    ids = query(store, "SELECT series_id FROM series ORDER BY 1").column(0).to_pylist()
    assert ids == ["b", "good"]


def test_truncated_last_line(store: Store, tmp_path: Path) -> None:
    """A file cut off mid-line keeps its complete lines and rejects the last one."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD + b'\n{"sequence": [1.0, 2.')
    report = ingest_jsonl(store, path)
    assert (report.accepted, report.rejected) == (1, 1)
    assert "truncated" in report.rejects[0].reason


def test_non_utf8_byte(store: Store, tmp_path: Path) -> None:
    """An invalid UTF-8 byte is reported with its position; the raw line is kept escaped."""
    row = _only_reject(store, tmp_path, b'{"series_id": "caf\xe9", "sequence": [1.0]}')
    assert row["reason"] == "invalid UTF-8 byte 0xe9 at byte 19"
    assert "\\xe9" in row["raw_line"]


def test_zero_byte_file(store: Store, tmp_path: Path) -> None:
    """An empty file ingests nothing and still records the ingest."""
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    report = ingest_jsonl(store, path)
    assert (report.lines_read, report.accepted, report.rejected) == (0, 0, 0)
    runs = query(store, "SELECT lines_read FROM ingest_runs").column(0).to_pylist()
    assert runs == [0]


def test_missing_file(store: Store, tmp_path: Path) -> None:
    """A path that does not exist raises IngestError naming it."""
    with pytest.raises(IngestError, match="no such file"):
        ingest_jsonl(store, tmp_path / "nope.jsonl")


def test_directory_instead_of_file(store: Store, tmp_path: Path) -> None:
    """A directory raises IngestError saying so."""
    with pytest.raises(IngestError, match="is a directory"):
        ingest_jsonl(store, tmp_path)


def test_gzip_file(store: Store, tmp_path: Path) -> None:
    """.jsonl.gz is read transparently, with the same line accounting."""
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(gzip.compress(GOOD + b"\n" + b'{"sequence": true}\n'))
    report = ingest_jsonl(store, path)
    assert (report.accepted, report.rejected) == (1, 1)


def test_corrupt_gzip_file(store: Store, tmp_path: Path) -> None:
    """A .gz that is not gzip fails clearly instead of producing garbage rows."""
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(GOOD)
    with pytest.raises(IngestError, match="cannot read"):
        ingest_jsonl(store, path)


def test_derived_ids_are_stable(store: Store, tmp_path: Path) -> None:
    """Lines without series_id get '<file stem>:<line>' ids."""
    _ingest(store, tmp_path, b'{"sequence": [1.0]}', b'{"sequence": [2.0]}', name="shop.jsonl")
    ids = query(store, "SELECT series_id FROM series ORDER BY 1").column(0).to_pylist()
    assert ids == ["shop:1", "shop:2"]
