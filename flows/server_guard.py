"""No orphaned Prefect servers: the temporary server dies with the process that started it.

Prefect starts its temporary ("ephemeral") API server as a child process and stops it at
interpreter exit (``atexit``). A ``kill -9`` of the CLI skips ``atexit``, so the server
(~220 MB) lived on with PPID 1. ``install()`` wraps Prefect's server launch so that each
server gets a watchdog: a tiny separate process that waits on both pids (``pidfd`` where
the kernel has it, else polls every 0.2 s) and, when the starting process is gone, stops
the server (SIGTERM, then SIGKILL after 5 s). It exits by itself when the server exits.

A watchdog process rather than ``PR_SET_PDEATHSIG``: Prefect may start the server from a
worker thread, and the death signal fires when that *thread* ends, not the process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

__all__ = ["install", "watch"]

# Runs in the watchdog process: `python -c WATCHDOG <parent pid> <server pid>`. Self-contained
# so it works whatever sys.path the starting process had.
WATCHDOG = r"""
import os, select, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])

def alive(pid):
    # A killed process stays a zombie until its parent reaps it: that counts as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def wait_any(pids, timeout=None):
    # Returns when one of pids has exited (or after timeout): pidfds, else polling.
    try:
        fds = [os.pidfd_open(pid) for pid in pids]
    except (AttributeError, OSError):
        fds = None
    if fds is not None:
        select.select(fds, [], [], timeout)
        for fd in fds:
            os.close(fd)
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    while all(alive(pid) for pid in pids):
        if deadline is not None and time.monotonic() > deadline:
            return
        time.sleep(0.2)

try:
    wait_any([parent, server])
except ProcessLookupError:
    pass  # one of them was already gone
if alive(server) and not alive(parent):
    try:
        os.kill(server, signal.SIGTERM)
        wait_any([server], timeout=5)
        if alive(server):
            os.kill(server, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


def watch(server_pid: int, parent_pid: int | None = None) -> subprocess.Popen[bytes]:
    """Start a watchdog that stops ``server_pid`` when ``parent_pid`` (default: us) dies."""
    return subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(parent_pid or os.getpid()), str(server_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to our group must not kill it before it acts
        close_fds=True,
    )


_INSTALLED = False


def install() -> None:
    """Give every temporary Prefect server started from this process a watchdog (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from prefect.server.api.server import SubprocessASGIServer

    original = SubprocessASGIServer._run_uvicorn_command

    def run_with_watchdog(self: Any) -> subprocess.Popen[Any]:
        process = original(self)
        watch(process.pid)
        return process

    SubprocessASGIServer._run_uvicorn_command = run_with_watchdog  # type: ignore[method-assign]
    _INSTALLED = True
