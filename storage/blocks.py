"""Parse a block of JSONL lines at once with DuckDB's JSON reader; per-line only where needed.

``parse_block`` returns, for each given line, either an accepted ``SeriesRecord`` that is
exactly what ``records.parse_line`` would return, or ``None``: that line must go through
``parse_line``, the authority on accept/reject and on a reject's field and reason.

Why this is safe. DuckDB reads the block with ``sequence`` typed ``DOUBLE[]`` and the other
fields as JSON, and fails the whole block (every line then goes per-line) on malformed
JSON, invalid UTF-8, a lone surrogate, a duplicated key, a line that is not an object, or
a ``sequence`` that is not a list of numbers or nulls it can cast. Its casts are lenient
(``true`` or ``"2.5"`` inside ``sequence`` become 1.0 and 2.5; an integer id becomes
text), so a row is trusted only when its raw bytes show none of that: no backslash (no
escaped key or string), exactly one ``"sequence"``, and a list span holding only number,
``null`` bytes; its id, start and freq are
JSON strings or null. The rules ``parse_line`` applies after decoding (empty or all-missing
sequence, float32 range, id blank/length, ISO start, freq alias) are checked here; rows
that break one, lines with deep nesting (the per-line decoders' limit), and rows with a
negative zero go per-line, so stored content and its hash do not depend on the path.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from storage.records import (
    _FLOAT32_MAX,
    MAX_SERIES_ID_LENGTH,
    LineError,
    SeriesRecord,
    _parse_freq,
    _parse_start,
)

__all__ = ["parse_block"]

_SQL = """
SELECT json_type(series_id) AS id_type, series_id ->> '$' AS series_id, sequence,
       json_type(start) AS start_type, start ->> '$' AS start,
       json_type(freq) AS freq_type, freq ->> '$' AS freq
FROM read_json($1, format = 'newline_delimited',
               columns = {series_id: 'JSON', sequence: 'DOUBLE[]', start: 'JSON', freq: 'JSON'})
"""
# Per-line decoders refuse nesting near 1000 levels; a line with at most this many brackets
# cannot come close, so DuckDB (whose limit differs) agrees with them on it.
_MAX_BRACKETS = 64
# Bytes a list of plain numbers and nulls may hold (digits, sign, point, exponent, comma,
# JSON whitespace, ``null``); anything else (a cast, a nesting, a NaN token that DuckDB also
# reads in spellings the per-line decoders refuse: ``nan``, ``-NaN``) goes per-line.
_SPAN_ALLOWED = b"0123456789+-.eE, \t\r\nnul"


def _plain_sequence(line: bytes) -> bool:
    """Whether the line's bytes rule out every lenient DuckDB cast (see the module doc)."""
    if b"\\" in line or line.count(b"[") + line.count(b"{") > _MAX_BRACKETS:
        return False
    key = line.find(b'"sequence"')
    if key < 0 or line.find(b'"sequence"', key + 10) >= 0:
        return False
    opening = line.find(b"[", key + 10)
    closing = line.find(b"]", opening + 1)
    if opening < 0 or closing < 0:
        return False
    return not line[opening + 1 : closing].translate(None, _SPAN_ALLOWED)


def _read(block: bytes, scratch: Path) -> pa.Table | None:
    path = scratch / f"block-{uuid.uuid4().hex}.jsonl"
    try:
        path.write_bytes(block)
        connection = duckdb.connect()
        try:
            return connection.sql(_SQL, params=[str(path)]).to_arrow_table()
        finally:
            connection.close()
    except duckdb.Error:
        return None  # the block holds something DuckDB refuses: every line goes per-line
    finally:
        path.unlink(missing_ok=True)


def _per_row(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """How many elements of each row (rows delimited by ``offsets``) are set in ``mask``."""
    if not mask.any():  # the common case costs one pass
        return np.zeros(len(offsets) - 1, np.int64)
    cumulative = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def parse_block(lines: list[bytes], scratch: Path) -> list[SeriesRecord | None]:
    """One entry per non-blank line: the accepted record, or None to parse it per-line.

    ``scratch`` is a folder for the block's temporary file (the store's ``tmp/``).
    """
    out: list[SeriesRecord | None] = [None] * len(lines)
    if not lines:
        return out
    table = _read(b"\n".join(lines) + b"\n", scratch)
    if table is None or table.num_rows != len(lines):
        return out
    sequence = table.column("sequence").combine_chunks()
    offsets = sequence.offsets.to_numpy()
    offsets = offsets - offsets[0]
    flat = sequence.flatten().to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    n_missing = _per_row(np.isnan(flat), offsets)  # JSON null (and the NaN token): missing
    if n_missing.any():
        flat = flat.astype(np.float64, copy=True)
        flat[np.isnan(flat)] = np.nan  # one NaN bit pattern, as content_hash canonicalises
    n_bad = _per_row((np.abs(flat) > _FLOAT32_MAX) | ((flat == 0) & np.signbit(flat)), offsets)
    sequence_null = sequence.is_null().to_numpy(zero_copy_only=False)
    suspect = sequence_null | (lengths == 0) | (n_missing == lengths) | (n_bad > 0)

    id_types, ids, start_types, starts, freq_types, freqs = (
        table.column(name).to_pylist()
        for name in ("id_type", "series_id", "start_type", "start", "freq_type", "freq")
    )
    text_or_null = (None, "NULL", "VARCHAR")
    bounds, missing_counts = offsets.tolist(), n_missing.tolist()
    start_of: dict[str, str | LineError | None] = {}
    for row, skip in enumerate(suspect.tolist()):
        if skip or not _plain_sequence(lines[row]):
            continue
        if id_types[row] not in text_or_null:
            continue  # an integer (or other) id: parse_line keeps integers exactly
        if start_types[row] not in text_or_null or freq_types[row] not in text_or_null:
            continue
        series_id = ids[row]
        if series_id is not None and (
            not series_id.strip() or len(series_id) > MAX_SERIES_ID_LENGTH
        ):
            continue
        start = starts[row]
        if start is not None:
            if start not in start_of:
                start_of[start] = _parse_start(start)
            start = start_of[start]
            if isinstance(start, LineError):
                continue
        freq = freqs[row]
        if freq is not None and isinstance(_parse_freq(freq), LineError):
            continue
        values = flat[bounds[row] : bounds[row + 1]]
        out[row] = SeriesRecord(series_id, values, missing_counts[row], start, freq)
    return out
