"""Lock errors of the Prefect server on SQLite vs PostgreSQL under the same load.

Usage: ``python benchmarks/bench_prefect_db.py [--workers 3] [--rounds 2] [--db sqlite postgres]
[--keep]``

For each database: a real ``prefect server start`` (SQLite in its own PREFECT_HOME, or the
local PostgreSQL of ``flows/local_postgres.py``), ``prefect deploy --all``, ``--workers``
process workers, then ``--rounds`` x (retrain, batch forecast, evaluate) triggered at once
on a small store with the offline experts. The load is the one of
``tests/flows/test_postgres_server.py`` (its ``run_load``). Prints one row per database:
the runs that completed, the server's ERROR log records and how many of them are lock
errors, lock errors in the workers' logs, and the seconds from the first trigger until
every run was final. Needs the dev extra.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.local_postgres import DATABASE_URL_ENV_VAR, start, stop  # noqa: E402
from tests.flows.test_postgres_server import LOCK_ERRORS, run_load  # noqa: E402
from tests.flows.test_server_e2e import running_server  # noqa: E402

#: A log record starts with Prefect's "HH:MM:SS.mmm | LEVEL | logger - message" line.
RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ", re.MULTILINE)


def error_records(log: str) -> list[str]:
    """The server's ERROR records, each with its traceback."""
    starts = [match.start() for match in RECORD.finditer(log)] + [len(log)]
    records = [log[start:end] for start, end in zip(starts, starts[1:], strict=False)]
    return [record for record in records if record.split("|", 2)[1].strip() == "ERROR"]


def measure(database: str, workers: int, rounds: int, keep: bool) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-prefect-{database}-"))
    pgdata = tmp / "pgdata"
    try:
        env = {DATABASE_URL_ENV_VAR: start(pgdata)} if database == "postgres" else {}
        with running_server(tmp, env) as (server, server_log):
            load = run_load(server, server_log, workers, rounds)
            errors = error_records(server_log.tail(10**8))
        worker_text = "".join(worker.tail(10**8) for worker in load.workers)
        return {
            "database": database,
            "runs": len(load.states),
            "completed": sum(state == "Completed" for state in load.states.values()),
            "server errors": len(errors),
            "of which lock errors": sum(bool(LOCK_ERRORS.search(error)) for error in errors),
            "lock lines in worker logs": len(LOCK_ERRORS.findall(worker_text)),
            "seconds": round(load.seconds, 1),
        }
    finally:
        if database == "postgres":
            stop(pgdata)
        if keep:
            print(f"{database}: logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgres"], default=None)
    parser.add_argument("--keep", action="store_true", help="keep the logs and stores")
    args = parser.parse_args()
    databases = args.db or ["sqlite", "postgres"]
    rows = [measure(db, args.workers, args.rounds, args.keep) for db in databases]
    print(f"\n{args.workers} workers, {args.rounds} rounds of retrain + forecast + evaluate\n")
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[key]) for key in header) + " |")


if __name__ == "__main__":
    main()
