"""Streaming JSONL ingest into the store (``.jsonl`` or ``.jsonl.gz``).

Guarantees:

* Streaming: lines are processed in chunks of ``chunk_lines`` (one series part and one
  rejects part per chunk; the series part is encoded in batches of 2,500 lines, one row
  group each, while the next batch is parsed); memory does not grow with the file (only
  with the number of distinct series ids, to detect duplicates).
* Nothing is lost: every non-blank line is accepted or rejected; rejects are stored in
  ``ingest_rejects`` with file, line number, field, reason and the raw line.
  ``lines_read = blank_lines + accepted + rejected`` for every ingest, recorded in
  ``ingest_runs``.
* Idempotent: a series is written only when its content differs from the latest stored
  version of its id, and a reject only when the file (by SHA-256) has no reject stored for
  that line number, whatever the chunk size. Re-ingesting a file adds no rows; a rerun
  after ``kill -9`` writes only what had not landed. The whole ingest holds the store's
  writer lock, so two ingests of the same file at once store it once.
* Honest about failures: an ``ingest_runs`` row with ``status = 'started'`` is written
  first and replaced at the end by ``complete``, or by ``partial`` (with ``error``) when the
  file cannot be read to its end (a truncated gzip, an I/O error): the lines read before
  the failure are stored and counted, and a rerun on the complete file adds the rest. A
  ``started`` row that never became anything else is a killed ingest.
* Standard input (``-``, ``/dev/stdin``) and named pipes are read once, as they arrive,
  into a spool file under the store's ``tmp/`` (the system's temporary folder for an
  ``s3://`` store; memory stays bounded), then ingested like a file; an interactive
  terminal is refused instead of waiting for typing.
* Series ids: ``series_id`` when present, else ``<file stem>:<line number>``. A duplicate id
  inside one file is rejected (the first occurrence wins). A different content under an
  id already stored becomes a new version; the ``series`` view shows the latest. A new
  version that only adds points at the end of the latest is stored as those points
  (``storage.versions``); readers still see the full series.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from storage.records import LineError, SeriesRecord, parse_line
from storage.schemas import TABLE_SCHEMAS
from storage.store import PartWriter, Store
from storage.versions import LatestVersion, append_base, encode_appends, latest_versions

__all__ = ["IngestError", "IngestReport", "RejectedLine", "ingest_jsonl", "content_hash"]

STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_MAX_RAW_LINE_CHARS = 1_000_000  # a reject keeps its raw text up to this length
_BATCH_LINES = 2_500  # lines per row group of a series part (a chunk holds several)


class IngestError(RuntimeError):
    """The file as a whole cannot be ingested (missing, a directory, unreadable)."""


@dataclass(frozen=True)
class RejectedLine:
    line_number: int
    field: str
    reason: str

    def describe(self, source: str) -> str:
        return f"{source}:{self.line_number}: field '{self.field}': {self.reason}"


@dataclass
class IngestReport:
    """Counts of one ingest. ``lines_read == blank_lines + accepted + rejected``."""

    ingest_id: str
    source_file: str
    file_sha256: str
    lines_read: int = 0
    blank_lines: int = 0
    accepted: int = 0
    new_series: int = 0
    new_versions: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejects: list[RejectedLine] = field(default_factory=list)  # first ``max_listed`` only
    status: str = "started"  # started | complete | partial
    error: str | None = None  # why a partial ingest stopped

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["rejects"] = [r.describe(self.source_file) for r in self.rejects]
        return data


def content_hash(record: SeriesRecord) -> str:
    """Identity of a series' content: values (NaN canonicalised), start and freq."""
    values = record.values
    if record.n_missing:
        values = np.where(np.isnan(values), np.nan, values)
    digest = hashlib.blake2b(values.astype("<f8", copy=False).tobytes(), digest_size=16)
    digest.update(f"|{record.start}|{record.freq}".encode())
    return digest.hexdigest()


def _series_parquet_options() -> dict[str, object]:
    """Parquet settings for ``series_versions`` parts: the float values split by byte.

    BYTE_STREAM_SPLIT groups the floats' exponent bytes so zstd finds them, which halves
    the writer's CPU against plain encoding (whose dictionary attempt and min/max
    statistics buy nothing for a list of floats) at a similar size. Every other column
    keeps the defaults (dictionary, statistics: readers filter on ``series_id``).
    """
    others = [name for name in TABLE_SCHEMAS["series_versions"].names if name != "values"]
    return {
        "use_dictionary": others,
        "write_statistics": others,
        "column_encoding": {"values.list.element": "BYTE_STREAM_SPLIT"},
    }


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise IngestError(f"{path}: no such file")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, expected a .jsonl or .jsonl.gz file")
    if not os.access(path, os.R_OK):
        raise IngestError(f"{path}: permission denied")


def _is_stream(path: str | os.PathLike[str]) -> bool:
    """Standard input, a pipe, a FIFO or a character device: readable once, no size."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _spool(store: Store, path: str | os.PathLike[str]) -> Path:
    """Copy a stream once, as it arrives, into ``tmp/`` (gzip kept as is); returns the copy."""
    name = "stdin" if str(path) == STDIN else Path(path).name or "stream"
    spooled = store.scratch_dir() / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}"
    try:
        if str(path) == STDIN:
            if sys.stdin is None or sys.stdin.isatty():
                raise IngestError(
                    "standard input is a terminal: pipe a file in (moe ingest - < data.jsonl)"
                )
            source = sys.stdin.buffer
            with open(spooled, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        else:
            with open(path, "rb") as source_file, open(spooled, "wb") as out:
                if os.isatty(source_file.fileno()):
                    raise IngestError(f"{path}: is a terminal: pipe a file in instead")
                shutil.copyfileobj(source_file, out, 1 << 20)
    except OSError as error:
        spooled.unlink(missing_ok=True)
        raise IngestError(f"{path}: cannot read: {error}") from error
    except BaseException:
        spooled.unlink(missing_ok=True)
        raise
    return spooled


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _open_lines(path: Path, sniff: bool = False) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line without its ending, whether it had a line ending)``; BOM stripped.

    Gzip is chosen by the ``.gz`` name, or by its magic bytes when ``sniff`` (a stream).
    """
    compressed = path.name.endswith(".gz")
    if sniff:
        with open(path, "rb") as probe:
            compressed = probe.read(2) == _GZIP_MAGIC
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as handle:
            first = True
            for line in handle:
                if first and line.startswith(_BOM):
                    line = line[len(_BOM) :]
                first = False
                stripped = line.rstrip(b"\r\n")
                yield stripped, len(stripped) != len(line)
    except (gzip.BadGzipFile, EOFError, OSError) as error:
        raise IngestError(f"{path}: cannot read: {error}") from error


def _derived_id_prefix(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


class _Chunk:
    """Rows of one chunk, columnar, ready to become a Parquet part."""

    def __init__(self) -> None:
        self.series: list[tuple[str, str, SeriesRecord, int]] = []
        self.rejects: list[tuple[int, LineError, bytes]] = []
        self.appends: dict[str, LatestVersion] = {}  # series stored as appends (versions.py)

    def series_table(self, source: str, ingest_id: str, ingested_at: datetime) -> pa.Table:
        lengths = np.fromiter((len(r.values) for _, _, r, _ in self.series), np.int64)
        offsets = np.zeros(len(lengths) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([r.values for _, _, r, _ in self.series])
        missing = np.fromiter((r.n_missing for _, _, r, _ in self.series), np.int64)
        # NaN marks a missing value and is stored as null; without any, no scan is needed.
        elements = pa.array(flat, from_pandas=True) if missing.any() else pa.array(flat)
        values = pa.ListArray.from_arrays(pa.array(offsets), elements)
        n = len(self.series)
        stamp = pa.scalar(ingested_at, pa.timestamp("us", tz="UTC"))
        return pa.table(
            {
                "series_id": [sid for sid, _, _, _ in self.series],
                "content_hash": [digest for _, digest, _, _ in self.series],
                "n_points": pa.array(lengths, pa.int32()),
                "n_missing": pa.array(missing, pa.int32()),
                "start": [r.start for _, _, r, _ in self.series],
                "freq": [r.freq for _, _, r, _ in self.series],
                "values": values,
                "source_file": [source] * n,
                "source_line": [line for _, _, _, line in self.series],
                "ingest_id": [ingest_id] * n,
                "ingested_at": pa.repeat(stamp, n),
            }
        )

    def rejects_table(self, source: str, sha: str, ingest_id: str) -> pa.Table:
        raw = [
            line.decode("utf-8", errors="backslashreplace")[:_MAX_RAW_LINE_CHARS]
            for _, _, line in self.rejects
        ]
        n = len(self.rejects)
        return pa.table(
            {
                "file_sha256": [sha] * n,
                "source_file": [source] * n,
                "line_number": [line for line, _, _ in self.rejects],
                "field": [error.field for _, error, _ in self.rejects],
                "reason": [error.reason for _, error, _ in self.rejects],
                "raw_line": raw,
                "ingest_id": [ingest_id] * n,
            }
        )


def _stored_reject_lines(store: Store, sha: str) -> set[int]:
    """Line numbers of ``sha``'s file that already have a reject row (any earlier ingest)."""
    connection = store.connect()
    try:
        rows = connection.execute(
            "SELECT DISTINCT line_number FROM ingest_rejects WHERE file_sha256 = $1", [sha]
        ).fetchall()
    finally:
        connection.close()
    return {int(line) for (line,) in rows}


def _write_run(
    store: Store,
    report: IngestReport,
    started: datetime,
    finished: datetime | None,
    *,
    held: bool = False,
) -> None:
    run = {key: [value] for key, value in report.as_dict().items() if key != "rejects"}
    run["started_at"] = [started]
    run["finished_at"] = [finished]
    store.write_part("ingest_runs", report.ingest_id, pa.table(run), held=held)


def ingest_jsonl(
    store: Store,
    path: str | os.PathLike[str],
    *,
    chunk_lines: int = 10_000,
    max_listed: int = 1000,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest one JSONL file (or ``-`` for standard input) into ``store``; returns the counts.

    Raises ``IngestError`` when the file itself cannot be read (before any row: nothing is
    stored; midway: the rows before are stored and the run is recorded as ``partial``);
    bad lines never raise. ``on_progress`` is called with the lines read after each chunk.
    Holds the store's writer lock throughout.
    """
    if chunk_lines < 1:
        raise ValueError(f"chunk_lines must be >= 1, got {chunk_lines}")
    with store.writer():
        if _is_stream(path):
            spooled = _spool(store, path)
            try:
                name = "<stdin>" if str(path) == STDIN else str(Path(path).absolute())
                prefix = "stdin" if str(path) == STDIN else _derived_id_prefix(Path(path))
                return _ingest_file(
                    store, spooled, name, prefix, True, chunk_lines, max_listed, on_progress
                )
            finally:
                spooled.unlink(missing_ok=True)
        file_path = Path(path)
        _check_readable(file_path)
        return _ingest_file(
            store,
            file_path,
            str(file_path.resolve()),
            _derived_id_prefix(file_path),
            False,
            chunk_lines,
            max_listed,
            on_progress,
        )


def _ingest_file(
    store: Store,
    file_path: Path,
    source: str,
    prefix: str,
    sniff: bool,
    chunk_lines: int,
    max_listed: int,
    on_progress: Callable[[int], None] | None,
) -> IngestReport:
    # pyarrow's table() (the writer thread) and the freq check (this thread) both import
    # pandas on first use; two threads importing it at once can deadlock, so import it first.
    import pandas.tseries.frequencies  # noqa: F401

    started_at = datetime.now(UTC)
    report = IngestReport(ingest_id=uuid.uuid4().hex, source_file=source, file_sha256="")
    stored_rejects: set[int] = set()

    def start() -> None:
        """Digest the file, record the run as started, load the file's stored rejects.

        The writer thread's first task, done before it writes any part, while the main
        thread reads the stored hashes and starts parsing (hashlib releases the GIL).
        """
        report.file_sha256 = _file_sha256(file_path)
        started = IngestReport(report.ingest_id, source, report.file_sha256)
        _write_run(store, started, started_at, None, held=True)  # a killed ingest leaves it
        stored_rejects.update(_stored_reject_lines(store, report.file_sha256))

    first_line_of: dict[str, int] = {}
    parquet_options = _series_parquet_options()

    # The writer thread's state: chunk ``index``'s series part, open while its batches come
    # in, and the chunk's rejects so far.
    part: PartWriter | None = None
    chunk_rejects = _Chunk()

    def flush(chunk: _Chunk, index: int, last: bool) -> None:
        """Encode one batch of chunk ``index``; after its ``last`` batch, publish its parts."""
        # Runs in the writer thread while ingest_jsonl's thread holds the writer lock.
        nonlocal part, chunk_rejects
        if chunk.series:  # only content not stored yet, so a rerun cannot duplicate rows
            table = encode_appends(
                chunk.series_table(source, report.ingest_id, started_at), chunk.appends
            )
            if part is None:
                name = f"{report.ingest_id}-{index:06d}"
                part = store.open_part("series_versions", name, held=True, options=parquet_options)
            part.write(table)
        # Rejects carry no content key: keep only lines of this file not stored before, so
        # a rerun with any chunk size adds none twice.
        chunk_rejects.rejects += [item for item in chunk.rejects if item[0] not in stored_rejects]
        if not last:
            return
        if part is not None:
            part.publish()
            part = None
        if chunk_rejects.rejects:
            rejects = chunk_rejects.rejects_table(source, report.file_sha256, report.ingest_id)
            store.write_part(
                "ingest_rejects", f"{report.ingest_id}-{index:06d}", rejects, held=True
            )
        chunk_rejects = _Chunk()

    def reject(chunk: _Chunk, line_number: int, error: LineError, raw: bytes) -> None:
        report.rejected += 1
        chunk.rejects.append((line_number, error, raw))
        if len(report.rejects) < max_listed:
            report.rejects.append(RejectedLine(line_number, error.field, error.reason))

    def take(chunk: _Chunk, line_number: int, raw: bytes, ended: bool) -> None:
        """Account for one non-blank line: accepted (new, new version, unchanged) or rejected."""
        parsed = parse_line(raw)
        if isinstance(parsed, LineError):
            if parsed.field == "line" and not ended:
                parsed = LineError("line", parsed.reason + " (no line ending: truncated file?)")
            return reject(chunk, line_number, parsed, raw)
        series_id = parsed.series_id or f"{prefix}:{line_number}"
        first = first_line_of.setdefault(series_id, line_number)
        if first != line_number:
            message = f"duplicate series_id {series_id!r} (first at line {first})"
            return reject(chunk, line_number, LineError("series_id", message), raw)
        report.accepted += 1
        digest = content_hash(parsed)
        known = latest.get(series_id)
        if known is not None and known.content_hash == digest:
            report.unchanged += 1
            return None
        if known is None:
            report.new_series += 1
        else:
            report.new_versions += 1
            base = append_base(parsed, known, content_hash)  # only new points are stored
            if base is not None:
                chunk.appends[series_id] = base
        chunk.series.append((series_id, digest, parsed, line_number))
        return None

    # One writer thread: Arrow/Parquet encoding releases the GIL, so encoding batch k
    # overlaps parsing batch k+1. A chunk's part is encoded batch by batch (one row group
    # each), so after the last line only one batch is left to encode, not a whole chunk.
    # At most two batches are in memory at once.
    failure: IngestError | None = None
    batch_lines = min(chunk_lines, _BATCH_LINES)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-writer") as writer:
            pending: Future[None] | None = writer.submit(start)
            latest = latest_versions(store)
            chunk, chunk_index = _Chunk(), 0
            try:
                lines = enumerate(_open_lines(file_path, sniff), start=1)
                for line_number, (raw, ended) in lines:
                    report.lines_read += 1
                    if raw.strip():
                        take(chunk, line_number, raw, ended)
                    else:
                        report.blank_lines += 1
                    in_chunk = line_number % chunk_lines
                    if in_chunk % batch_lines == 0:  # a batch ends (in_chunk == 0: a chunk)
                        if pending is not None:
                            pending.result()  # surface a write error now; bound memory
                        pending = writer.submit(flush, chunk, chunk_index, in_chunk == 0)
                        chunk = _Chunk()
                        if in_chunk == 0:
                            chunk_index += 1
                            if on_progress is not None:
                                on_progress(report.lines_read)
            except IngestError as error:  # the file ended early or could not be read
                failure = IngestError(str(error).replace(str(file_path), source))
            if pending is not None:
                pending.result()
            flush(chunk, chunk_index, True)  # what was read before a failure is kept
    finally:
        if part is not None:  # a write failed or the ingest was interrupted mid-chunk
            part.discard()

    report.status = "complete" if failure is None else "partial"
    report.error = None if failure is None else str(failure)
    _write_run(store, report, started_at, datetime.now(UTC))
    if failure is not None:
        raise IngestError(
            f"{failure}; stored the {report.lines_read} lines read before it "
            f"({report.accepted} accepted, {report.rejected} rejected) and recorded ingest "
            f"{report.ingest_id} as partial: ingest the complete file again to finish"
        ) from failure
    return report
