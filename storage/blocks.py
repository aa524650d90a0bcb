"""Parse a block of JSONL lines at once with Arrow's JSON reader; per-line only where needed.

``parse_block`` returns, for each given line, either an accepted ``SeriesRecord`` that is
exactly what ``records.parse_line`` would return, or ``None``: that line must go through
``parse_line`` (the authority on accept/reject and on the reject's field and reason).

Why this is safe: Arrow reads the block against a fixed schema (``series_id`` string,
``sequence`` list<double>, ``start``/``freq`` string) and fails the whole block on anything
outside it (an integer id, a boolean or string in ``sequence``, a lone
surrogate, a duplicated key, trailing text), and the block goes per-line when it is not
valid UTF-8 (Arrow does not check strings); then every line of the block goes per-line.
Rows Arrow accepts are checked here against the rules ``parse_line`` applies after decoding
(empty or all-missing sequence, float32 range, id length/blank, ISO start, freq alias); a
row that breaks one goes per-line. Lines whose nesting could exceed what the per-line
decoders allow, and rows holding a negative zero (which ``parse_line`` may read as an
integer 0), also go per-line, so the stored content and its hash do not depend on the path.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from storage.records import (
    _FLOAT32_MAX,
    MAX_SERIES_ID_LENGTH,
    LineError,
    SeriesRecord,
    _parse_freq,
    _parse_start,
)

__all__ = ["parse_block"]

_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("sequence", pa.list_(pa.float64())),
        ("start", pa.string()),
        ("freq", pa.string()),
    ]
)
_PARSE = pa_json.ParseOptions(explicit_schema=_SCHEMA, unexpected_field_behavior="ignore")
# Per-line decoders refuse nesting near 1000 levels; a line with at most this many brackets
# cannot come close, so Arrow (which has no such limit) agrees with them on it.
_MAX_BRACKETS = 64


def _read(block: bytes) -> pa.Table | None:
    if not block.isascii():
        try:  # Arrow does not validate UTF-8 inside strings; the per-line path names the byte
            block.decode("utf-8")
        except UnicodeDecodeError:
            return None
    options = pa_json.ReadOptions(use_threads=True, block_size=max(len(block) + 1, 1 << 20))
    try:
        return pa_json.read_json(io.BytesIO(block), read_options=options, parse_options=_PARSE)
    except (pa.ArrowInvalid, UnicodeDecodeError, pa.ArrowNotImplementedError):
        return None


def parse_block(lines: list[bytes]) -> list[SeriesRecord | None]:
    """One entry per (non-blank) line: the accepted record, or None to parse it per-line."""
    # Arrow 26 crashes the process on a line that is a bare scalar (``1``); only lines that
    # open an object go to Arrow, the rest per-line.
    objects = [row for row, line in enumerate(lines) if line.lstrip(b" \t")[:1] == b"{"]
    out: list[SeriesRecord | None] = [None] * len(lines)
    if not objects:
        return out
    if len(objects) != len(lines):
        for row, record in zip(objects, parse_block([lines[row] for row in objects]), strict=True):
            out[row] = record
        return out
    table = _read(b"\n".join(lines))
    if table is None or table.num_rows != len(lines):  # e.g. two objects on one line
        return out
    sequence = table.column("sequence").combine_chunks()
    if not isinstance(sequence, pa.ListArray):  # combine_chunks of a chunked list column
        sequence = pa.concat_arrays(sequence.chunks)  # pragma: no cover - defensive
    offsets = sequence.offsets.to_numpy()
    offsets = offsets - offsets[0]
    flat = sequence.flatten().to_numpy(zero_copy_only=False).astype(np.float64, copy=True)
    missing = np.isnan(flat)  # JSON null (and the NaN token) are missing values
    flat[missing] = np.nan  # one NaN bit pattern, as content_hash canonicalises
    bad_value = (np.abs(flat) > _FLOAT32_MAX) | ((flat == 0) & np.signbit(flat))
    cum_missing = np.concatenate([[0], np.cumsum(missing)])
    cum_bad = np.concatenate([[0], np.cumsum(bad_value)])
    lengths = np.diff(offsets)
    n_missing = cum_missing[offsets[1:]] - cum_missing[offsets[:-1]]
    n_bad = cum_bad[offsets[1:]] - cum_bad[offsets[:-1]]
    sequence_null = sequence.is_null().to_numpy(zero_copy_only=False)
    suspect = sequence_null | (lengths == 0) | (n_missing == lengths) | (n_bad > 0)

    ids = table.column("series_id").to_pylist()
    starts = table.column("start").to_pylist()
    freqs = table.column("freq").to_pylist()
    start_of: dict[str, str | LineError | None] = {}
    for row, line in enumerate(lines):
        if suspect[row] or line.count(b"[") + line.count(b"{") > _MAX_BRACKETS:
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
        values = flat[offsets[row] : offsets[row + 1]]
        out[row] = SeriesRecord(series_id, values, int(n_missing[row]), start, freq)
    return out
