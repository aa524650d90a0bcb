"""Validate one JSONL line into a series record, or say precisely why it is rejected.

Accepted line: a JSON object with ``sequence`` (a non-empty list of numbers) and optional
``series_id`` (string or integer), ``start`` (ISO 8601 date or date-time) and ``freq``
(a pandas offset alias such as ``D``, ``h``, ``W-MON``, ``MS``). Other fields are ignored.

Missing values: ``null`` and the non-standard ``NaN`` token inside ``sequence`` are kept as
missing values (stored as SQL NULL; models see a mask). A sequence with no observed value
is rejected. ``Infinity``/``-Infinity`` tokens, numbers that overflow float64 (``1e400``)
and magnitudes beyond float32 (the models' dtype, about 3.4e38) are rejected: they are
not observations a model can use, and silently clipping them would change the data.
Booleans, strings and nested lists inside ``sequence`` are rejected.
"""

from __future__ import annotations

import array
import json
import warnings
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import numpy as np
import orjson

__all__ = ["SeriesRecord", "LineError", "parse_line", "MAX_SERIES_ID_LENGTH"]

MAX_SERIES_ID_LENGTH = 256
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_NUMBER_OR_NULL_TYPES = frozenset({float, int, type(None)})


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """An accepted line. ``values`` is float64 with NaN for missing values."""

    series_id: str | None
    values: np.ndarray
    n_missing: int
    start: str | None
    freq: str | None


@dataclass(frozen=True, slots=True)
class LineError:
    """Why a line was rejected: the offending field (or ``line``) and a readable reason."""

    field: str
    reason: str


def _decode(raw: bytes) -> object | LineError:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass  # orjson is strict (no NaN tokens, no overflow); classify with the stdlib below.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1].hex()
        return LineError("line", f"invalid UTF-8 byte 0x{bad} at byte {error.start + 1}")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        return LineError("line", f"invalid JSON at column {error.colno}: {error.msg}")
    except RecursionError:
        return LineError("line", "invalid JSON: nesting too deep")
    # The stdlib accepts lone surrogate escapes ("\udc80") that orjson refuses; such a string
    # cannot be stored as UTF-8, so the line is rejected wherever the string is.
    where = _lone_surrogate(parsed, "")
    if where is not None:
        return LineError(
            where or "line", "invalid Unicode: a lone surrogate escape (\\ud800-\\udfff)"
        )
    return parsed


def _lone_surrogate(value: object, where: str) -> str | None:
    """Path of the first string (key or value) that is not valid Unicode, or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                return where or "line"
            found = _lone_surrogate(item, inner)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _lone_surrogate(item, where)
            if found is not None:
                return found
    return None


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, str):
        shown = value if len(value) <= 20 else value[:20] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, list):
        return "a nested list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _parse_values(sequence: object, may_hold_booleans: bool) -> tuple[np.ndarray, int] | LineError:
    """The values as float64 (NaN = missing) and the number missing, or why not."""
    if not isinstance(sequence, list):
        return LineError("sequence", f"expected a list of numbers, got {_describe(sequence)}")
    if not sequence:
        return LineError("sequence", "empty list")
    if not may_hold_booleans:
        # Hot path (500 points a line): numpy infers float64/int64 only when every element
        # is a number; None, strings or nested lists give another dtype or shape. Booleans
        # would pass as numbers, hence the caller's byte check for ``true``/``false``.
        try:
            inferred = np.array(sequence)
        except (ValueError, OverflowError):
            inferred = None
        if inferred is not None and inferred.ndim == 1 and inferred.dtype.kind in "fi":
            values = inferred.astype(np.float64, copy=False)
            # NaN cannot occur here (no NaN from numbers); max covers both signs.
            if np.abs(values).max() <= _FLOAT32_MAX:
                return values, 0
    for index, value in enumerate(sequence):
        if type(value) not in _NUMBER_OR_NULL_TYPES:
            return LineError(
                "sequence", f"element {index} is {_describe(value)}, expected a number"
            )
    try:
        values = np.array(sequence, dtype=np.float64)  # None -> NaN (missing)
    except OverflowError:
        return LineError("sequence", "an integer is too large for float64")
    too_big = np.flatnonzero(np.abs(values) > _FLOAT32_MAX)  # NaN compares False: missing ok
    if too_big.size:
        index = int(too_big[0])
        what = "infinite" if np.isinf(values[index]) else f"{values[index]:g}"
        return LineError(
            "sequence",
            f"element {index} is {what}: magnitude beyond float32 range "
            f"(Infinity token or overflow)",
        )
    n_missing = int(np.count_nonzero(np.isnan(values)))
    if n_missing == len(values):
        return LineError("sequence", "no observed value (all null/NaN)")
    return values, n_missing


def _parse_series_id(value: object) -> str | None | LineError:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return LineError("series_id", f"expected a string or integer, got {_describe(value)}")
    text = str(value)
    if not text.strip():
        return LineError("series_id", "empty string")
    if len(text) > MAX_SERIES_ID_LENGTH:
        return LineError("series_id", f"longer than {MAX_SERIES_ID_LENGTH} characters")
    return text


def _parse_start(value: object) -> str | None | LineError:
    if value is None:
        return None
    if not isinstance(value, str):
        return LineError("start", f"expected an ISO 8601 string, got {_describe(value)}")
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        return LineError("start", f"not an ISO 8601 date or date-time: {value[:40]!r}")


@lru_cache(maxsize=256)
def _valid_freq(alias: str) -> bool:
    from pandas.tseries.frequencies import to_offset  # pandas ships with pyarrow users anyway

    # Older aliases ('H', 'Q', 'A') still parse but make pandas warn that they are
    # deprecated, and so does a word it then rejects ('false'): the reject record, not a
    # warning on stderr, is what tells the user, and moe.seasonality knows both spellings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            to_offset(alias)
        except (ValueError, TypeError):
            return False
    return True


def _parse_freq(value: object) -> str | None | LineError:
    if value is None:
        return None
    if not isinstance(value, str) or not _valid_freq(value):
        return LineError("freq", f"not a pandas offset alias (e.g. 'D', 'h', 'MS'): {value!r}")
    return value


def parse_line(raw: bytes) -> SeriesRecord | LineError:
    """Parse one non-blank line (bytes, without its line ending).

    Fast path for the common well-formed line; anything it cannot vouch for cheaply goes to
    ``_parse_checked``, which validates every rule and words the reason, so rejects (and
    every accepted record) are exactly what ``_parse_checked`` alone gives.
    """
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _parse_checked(raw)
    if type(record) is not dict:
        return _parse_checked(raw)
    sequence = record.get("sequence")
    if type(sequence) is not list or not sequence or _may_hold_booleans(raw):
        return _parse_checked(raw)
    try:
        # Accepts exactly int and float elements (orjson gives no other number types) plus
        # booleans, excluded above; None, strings, lists and objects raise TypeError.
        values = np.frombuffer(array.array("d", sequence), dtype=np.float64)
    except (TypeError, OverflowError):
        return _parse_checked(raw)
    if not np.abs(values).max() <= _FLOAT32_MAX:  # no NaN here: orjson has no NaN token
        return _parse_checked(raw)
    series_id = record.get("series_id")
    if type(series_id) is int:
        series_id = str(series_id)  # within 64 bits (orjson), so at most 20 characters
    elif series_id is not None and (
        type(series_id) is not str or len(series_id) > MAX_SERIES_ID_LENGTH or not series_id.strip()
    ):
        return _parse_checked(raw)
    start = record.get("start")
    if start is not None:
        start = _parse_start(start)
        if isinstance(start, LineError):
            return start
    freq = record.get("freq")
    if freq is not None and (type(freq) is not str or not _valid_freq(freq)):
        return _parse_checked(raw)
    return SeriesRecord(series_id, values, 0, start, freq)


def _may_hold_booleans(raw: bytes) -> bool:
    """Whether ``true``/``false`` occur in the line (two memchr scans settle most lines)."""
    if b"t" not in raw and b"f" not in raw:
        return False
    return b"true" in raw or b"false" in raw


def _parse_checked(raw: bytes) -> SeriesRecord | LineError:
    """Parse one line checking every rule in order; the reference for ``parse_line``."""
    record = _decode(raw)
    if isinstance(record, LineError):
        return record
    if not isinstance(record, dict):
        return LineError("line", f"expected a JSON object, got {_describe(record)}")
    if "sequence" not in record:
        return LineError("sequence", "missing field 'sequence'")
    parsed_values = _parse_values(record["sequence"], b"true" in raw or b"false" in raw)
    if isinstance(parsed_values, LineError):
        return parsed_values
    values, n_missing = parsed_values
    raw_id = record.get("series_id")
    if isinstance(raw_id, float) and raw_id.is_integer():
        # orjson reads integers beyond 64 bits as floats; the stdlib keeps them exact.
        exact = json.loads(raw).get("series_id")
        raw_id = exact if isinstance(exact, int) else raw_id
    series_id = _parse_series_id(raw_id)
    if isinstance(series_id, LineError):
        return series_id
    start = _parse_start(record.get("start"))
    if isinstance(start, LineError):
        return start
    freq = _parse_freq(record.get("freq"))
    if isinstance(freq, LineError):
        return freq
    return SeriesRecord(series_id, values, n_missing, start, freq)
