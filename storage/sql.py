"""Read-only SQL over the store's views, for ``moe sql`` and for programs.

Two independent guards: only SELECT-like statements are accepted (checked on DuckDB's own
parse, not with a regex), and the connection is sandboxed (no external access except the
store's table folders, configuration locked) so that a table function such as
``read_csv('/etc/passwd')`` inside a SELECT cannot read other files either.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from storage.store import Store

__all__ = ["ReadOnlyViolation", "query", "readonly_connection"]

_ALLOWED_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class ReadOnlyViolation(ValueError):
    """The SQL would write, attach, copy or read outside the store."""


def readonly_connection(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the store's views, locked down to reading the store."""
    connection = store.connect()
    allowed = store.tables_dir.as_posix() + "/"
    connection.execute("SET allowed_directories = [$1]", [allowed])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


def _check_statements(connection: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        statements = connection.extract_statements(sql)
    except duckdb.Error as error:
        raise ReadOnlyViolation(f"cannot parse SQL: {error}") from error
    if len(statements) != 1:
        raise ReadOnlyViolation(f"expected exactly one statement, got {len(statements)}")
    kind = statements[0].type
    if kind not in _ALLOWED_STATEMENTS:
        name = str(kind).rsplit(".", 1)[-1]
        raise ReadOnlyViolation(
            f"only SELECT queries are allowed here (got {name}); the store is "
            "written by the pipeline, never through SQL"
        )


def query(store: Store, sql: str, parameters: Sequence[object] | None = None) -> pa.Table:
    """Run one read-only statement with bound ``parameters`` (``$1`` or ``?``)."""
    connection = readonly_connection(store)
    try:
        _check_statements(connection, sql)
        try:
            return connection.sql(sql, params=list(parameters or [])).to_arrow_table()
        except duckdb.PermissionException as error:
            raise ReadOnlyViolation(f"refused: {error}") from error
    finally:
        connection.close()
