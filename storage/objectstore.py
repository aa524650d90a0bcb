"""The store on object storage: ``s3://bucket/prefix`` locations and the writer lease.

The store keeps its file protocol behind fsspec: a local store uses the local filesystem
(and ``os.replace``), a store at ``s3://bucket/prefix`` uses ``s3fs``. Credentials and the
endpoint come from the standard AWS settings (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for an S3-compatible server, profiles),
read by botocore itself; nothing here stores them.

Publishing a part: S3 has no rename, but one PUT (or one completed multipart upload) makes
an object appear whole or not at all. A part is therefore written completely to a local
staging file first and only then uploaded under its final key, so a writer that fails
midway publishes nothing. Streaming straight into ``fs.open(key, "wb")`` would not be
safe: fsspec's file object uploads what it has when the ``with`` block exits, error or not.

One writer: ``ObjectLease`` is a lock object ``<prefix>/writer.lock`` created with a
conditional PUT (``If-None-Match: *``): exactly one creator wins. It carries an expiry
that a heartbeat thread renews (``If-Match`` on the holder's ETag) while the lock is held,
so a writer that died is replaced after its lease ends, and a writer that lost its lease
(it stalled past the expiry and another took over) refuses to publish anything further.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

import fsspec

__all__ = [
    "S3_SCHEME",
    "LEASE_ENV_VAR",
    "ObjectLease",
    "LeaseLost",
    "is_object_location",
    "normalise_location",
    "object_filesystem",
]

S3_SCHEME = "s3://"
LEASE_ENV_VAR = "MOE_S3_LOCK_LEASE"
_DEFAULT_LEASE_S = 60.0
_POLL_S = 0.2
# One writer filesystem per process (key: pid) and one for readers (key: -pid); never shared
# across fork, whose child cannot use the parent's event loop.
_FILESYSTEMS: dict[int, fsspec.AbstractFileSystem] = {}
_FILESYSTEMS_GUARD = threading.Lock()


class LeaseLost(RuntimeError):
    """This process' writer lease on an object-storage store ended before its write did."""


def is_object_location(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names object storage (``s3://...``) rather than a folder."""
    return str(location).startswith(S3_SCHEME)


def normalise_location(location: str) -> str:
    """``s3://bucket/prefix`` without trailing slashes; refuses what is not a store prefix."""
    rest = location[len(S3_SCHEME) :].rstrip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"store location {location!r} names no bucket: use s3://bucket/prefix")
    segments = [s for s in prefix.split("/") if s]
    if any(s in (".", "..") for s in segments) or "//" in prefix:
        raise ValueError(
            f"store location {location!r}: '.', '..' and empty segments are not allowed"
        )
    return S3_SCHEME + "/".join([bucket, *segments])


def object_filesystem() -> fsspec.AbstractFileSystem:
    """The process' S3 filesystem (``s3fs``), with listing caches off: readers must see
    parts published by other processes at once."""
    with _FILESYSTEMS_GUARD:
        fs = _FILESYSTEMS.get(os.getpid())
        if fs is None:
            try:
                import s3fs
            except ImportError as error:
                raise RuntimeError(
                    "a store on s3:// needs the s3 extra: pip install 'moe-forecast[s3]'"
                ) from error
            fs = s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)
            _FILESYSTEMS[os.getpid()] = fs
        return fs


def reader_filesystem() -> fsspec.AbstractFileSystem:
    """The process' S3 filesystem for DuckDB readers: listings are cached, so DuckDB's
    repeated size/modified look-ups of a listed part cost no request. The store empties the
    cache whenever it registers it on a new connection (``Store.register``)."""
    with _FILESYSTEMS_GUARD:
        key = -os.getpid()
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            import s3fs  # object_filesystem() was called first and said how to install it

            fs = s3fs.S3FileSystem(use_listings_cache=True, skip_instance_cache=True)
            _FILESYSTEMS[key] = fs
        return fs


def _bucket_key(url: str) -> tuple[str, str]:
    bucket, _, key = url[len(S3_SCHEME) :].partition("/")
    return bucket, key


def _precondition_failed(error: BaseException) -> bool:
    """Whether an s3fs error is S3's answer to a failed ``If-None-Match``/``If-Match``."""
    if isinstance(error, FileExistsError):  # s3fs' translation of a failed If-None-Match
        return True
    response = getattr(error.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return code in ("PreconditionFailed", "ConditionalRequestConflict")


class ObjectLease:
    """An exclusive, expiring lock object at ``url``; ``acquire``/``release`` by one thread.

    ``lease_s`` (default ``$MOE_S3_LOCK_LEASE`` or 60) is how long a holder that stops
    renewing keeps the lock; renewals happen every quarter of it. Hosts' clocks must agree
    to well within ``lease_s`` (the expiry is the holder's wall-clock time).
    """

    def __init__(
        self, fs: fsspec.AbstractFileSystem, url: str, lease_s: float | None = None
    ) -> None:
        self.fs = fs
        self.url = url
        self.bucket, self.key = _bucket_key(url)
        if lease_s is None:
            lease_s = float(os.environ.get(LEASE_ENV_VAR, _DEFAULT_LEASE_S))
        if lease_s <= 0:
            raise ValueError(f"${LEASE_ENV_VAR} must be a positive number of seconds")
        self.lease_s = lease_s
        self.owner = f"host {socket.gethostname()} pid {os.getpid()} ({uuid.uuid4().hex[:8]})"
        self._etag: str | None = None
        self._expires_at = 0.0
        self._lost = False
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._state = threading.Lock()

    def _body(self) -> tuple[bytes, float]:
        expires_at = time.time() + self.lease_s
        record = {"owner": self.owner, "expires_at": expires_at, "since": time.ctime()}
        return json.dumps(record).encode(), expires_at

    def _put(self, **condition: str) -> None:
        body, expires_at = self._body()
        answer = self.fs.call_s3(
            "put_object", Bucket=self.bucket, Key=self.key, Body=body, **condition
        )
        self._etag, self._expires_at = answer["ETag"], expires_at

    def _current(self) -> tuple[dict[str, Any], str] | None:
        """The lock object's record and ETag, or None when there is none."""
        try:
            answer = self.fs.call_s3("get_object", Bucket=self.bucket, Key=self.key)
        except FileNotFoundError:
            return None
        data = _read_body(self.fs, answer["Body"])
        try:
            record = json.loads(data)
        except ValueError:
            record = {"owner": "unreadable lock object", "expires_at": 0.0}
        return record, answer["ETag"]

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to ``timeout`` s (negative: forever); ``TimeoutError``
        names the holder."""
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            try:
                self._put(IfNoneMatch="*")
                break
            except OSError as error:
                if not _precondition_failed(error):
                    raise
            current = self._current()
            if current is None:
                continue  # released between our PUT and GET: try again at once
            record, etag = current
            if float(record.get("expires_at", 0.0)) < time.time():
                # The holder stopped renewing: remove its lock, unless it renewed meanwhile.
                try:
                    self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=etag)
                except OSError as error:
                    if not _precondition_failed(error) and not isinstance(error, FileNotFoundError):
                        raise
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"held by {record.get('owner', 'unknown')}")
            time.sleep(_POLL_S)
        self._lost = False
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._renew, name="moe-store-lease", daemon=True)
        self._heartbeat.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 4):
            with self._state:
                if self._etag is None:
                    return
                try:
                    self._put(IfMatch=self._etag)
                except OSError:
                    # Taken over (or unreachable past the lease): stop publishing.
                    if time.time() >= self._expires_at or _lease_taken(self):
                        self._lost = True
                        return

    def check(self) -> None:
        """Raise ``LeaseLost`` unless this process still holds the lock with time left."""
        if self._etag is None or self._lost or time.time() >= self._expires_at:
            raise LeaseLost(
                f"the writer lease on {self.url} ended before this write finished (the "
                f"process stalled longer than ${LEASE_ENV_VAR}={self.lease_s:g} s, or another "
                "writer took over); nothing more is published: rerun the operation"
            )

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        with self._state:
            etag, self._etag = self._etag, None
        if etag is None or self._lost:
            return
        try:
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key, IfMatch=etag)
        except OSError as error:  # someone took it over after our lease ended: theirs now
            if not _precondition_failed(error) and not isinstance(error, FileNotFoundError):
                raise

    def holder(self) -> str:
        current = self._current()
        return "none" if current is None else str(current[0].get("owner", "unknown"))


def _lease_taken(lease: ObjectLease) -> bool:
    """After a failed renewal: whether the lock object is no longer ours."""
    try:
        current = lease._current()
    except OSError:
        return False
    return current is None or current[1] != lease._etag


def _read_body(fs: fsspec.AbstractFileSystem, body: Any) -> bytes:
    """Read an aiobotocore streaming body on s3fs' event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        return bytes(await body.read())

    return bytes(sync(fs.loop, read))
