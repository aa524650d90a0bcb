"""The DuckDB block reader agrees with the per-line validator on every line it accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage.blocks import parse_block
from storage.ingest import content_hash
from storage.records import SeriesRecord, parse_line

TRICKY = [
    b'{"series_id": "a", "sequence": [1.5, null, 3]}',
    b'{"series_id": "b", "sequence": [NaN, 2.0]}',
    b'{"series_id": "c", "sequence": [1, -0, 0.0, -0.0]}',
    b'{"series_id": "d", "sequence": [123456789012345678901234567890, 0.1]}',
    b'{"series_id": "e", "sequence": [1e39]}',
    b'{"series_id": "f", "sequence": [Infinity]}',
    b'{"series_id": "g", "sequence": []}',
    b'{"series_id": "h", "sequence": [null, null]}',
    b'{"series_id": "   ", "sequence": [1]}',
    b'{"series_id": "' + b"x" * 300 + b'", "sequence": [1]}',
    b'{"series_id": "i", "sequence": [1], "start": "2024-01-01"}',
    b'{"series_id": "j", "sequence": [1], "start": "yesterday"}',
    b'{"series_id": "k", "sequence": [1], "freq": "D"}',
    b'{"series_id": "l", "sequence": [1], "freq": "fortnightly"}',
    b'{"series_id": "m", "sequence": [1], "meta": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"series_id": "n"}',
    b'{"series_id": "o", "sequence": null}',
    b'{"series_id": "\\u00e9t\\u00e9", "sequence": [0.1, 0.2]}',
    b'{"series_id": null, "sequence": [2.5e-300, 3.4e38]}',
]
NOT_OBJECTS = [b"null", b"1", b'"text"', b"[1, 2]", b"true"]


def _same(fast: SeriesRecord, line: bytes) -> None:
    slow = parse_line(line)
    assert isinstance(slow, SeriesRecord), (line, slow)
    assert (fast.series_id, fast.start, fast.freq, fast.n_missing) == (
        slow.series_id,
        slow.start,
        slow.freq,
        slow.n_missing,
    )
    assert fast.values.tobytes() == slow.values.astype(np.float64).tobytes() or np.array_equal(
        fast.values, slow.values, equal_nan=True
    )
    assert content_hash(fast) == content_hash(slow)  # idempotence cannot depend on the path


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    return tmp_path


def test_tricky_lines_agree_alone_and_in_one_block(scratch: Path) -> None:
    """Each accepted line equals parse_line's record; rule-breaking rows are handed back."""
    for line in TRICKY:
        (alone,) = parse_block([line], scratch)
        if alone is not None:
            _same(alone, line)
    together = parse_block(TRICKY, scratch)
    assert len(together) == len(TRICKY)
    for line, record in zip(TRICKY, together, strict=True):
        if record is not None:
            _same(record, line)
    accepted_ids = {r.series_id for r in together if r is not None}
    # Row-level anomalies do not sink the block: plain rows still take the fast path.
    assert {"a", "d", "i", "k", None} <= accepted_ids
    for sid in "cefghjlmno":  # each breaks a rule, or could parse differently per-line
        assert sid not in accepted_ids
    assert "\u00e9t\u00e9" not in accepted_ids  # escapes (a backslash) go per-line
    # A line that is not an object is never accepted by the block reader.
    for other in NOT_OBJECTS:
        first, second = parse_block([TRICKY[0], other], scratch)
        assert second is None
        if first is not None:
            _same(first, TRICKY[0])


def test_block_reader_refusal_goes_per_line(scratch: Path) -> None:
    """A line DuckDB refuses sends its whole block per-line; lenient casts are not trusted."""
    lines = [b'{"series_id": "a", "sequence": [1]}', b'{"series_id": "b", "sequence": [1,,]}']
    assert parse_block(lines, scratch) == [None, None]
    cast = [
        b'{"series_id": 7, "sequence": [1]}',  # DuckDB would make the id text
        b'{"series_id": "c", "sequence": [1, true]}',  # ... and true 1.0
        b'{"series_id": "d", "sequence": [1, "2.5"]}',  # ... and "2.5" 2.5
        b'{"x": "sequence", "y": [1], "seq\\u0075ence": [true]}',  # an escaped key
        b'{"series_id": "e", "sequence": [1]}',
    ]
    assert [r is None for r in parse_block(cast, scratch)] == [True, True, True, True, False]
    assert parse_block([b'{"sequence": [1]}{"sequence": [2]}'], scratch) == [
        None
    ]  # two rows, one line


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["series_id", "sequence", "start", "freq", "x"]),
            st.one_of(
                st.text(max_size=6),
                st.integers(),
                st.none(),
                st.floats(),
                st.lists(st.one_of(st.floats(), st.integers(), st.none()), max_size=6),
            ),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_fuzzed_blocks_agree_with_parse_line(
    scratch: Path, objects: list[dict[str, object]]
) -> None:
    """Random objects: whatever the block reader accepts, parse_line accepts identically."""
    lines = [json.dumps(obj).encode() for obj in objects]  # NaN/Infinity tokens included
    for line, record in zip(lines, parse_block(lines, scratch), strict=True):
        if record is not None:
            _same(record, line)


@pytest.mark.parametrize(
    "token",
    [b"nan", b"-NaN", b"Nan", b"NAN", b"NaN", b"nul", b"nulll", b"unll", b"1.", b".5", b"01"]
    + [b"+1", b"1.e5", b"-", b"1e", b"1 2", b"-0.0", b"1E5", b"0x10", b"null", b"Infinity"],
)
def test_number_spellings_agree_with_parse_line(scratch: Path, token: bytes) -> None:
    """Spellings DuckDB reads more leniently than JSON (``nan``, ``-NaN``) are not trusted."""
    line = b'{"series_id": "a", "sequence": [' + token + b", 3]}"
    (record,) = parse_block([line], scratch)
    if record is not None:
        _same(record, line)
