"""Read-only SQL over the store's views, for ``moe sql`` and for programs.

Read-only by construction, with two independent layers:

1. **What may run** is decided from DuckDB's own parse, never from keywords. The text must
   be exactly one statement of type SELECT (``SHOW``/``DESCRIBE``/``SUMMARIZE`` are SELECTs
   in DuckDB), or ``EXPLAIN`` of one; ``EXPLAIN ANALYZE`` executes its statement and is
   refused whatever it explains. The SELECT's syntax tree (``json_serialize_sql``) is then
   walked: every table it names must be one of the store's views, a CTE of the query or an
   ``information_schema``/``pg_catalog`` table, and every table function must be on a short
   allow-list (no ``read_*``, ``glob``, ``query``, ``query_table``, ``pragma_*``, ...).
2. **What the connection can touch**: an in-memory DuckDB whose views list the store's
   Parquet parts by name, with external access disabled except for exactly those files
   (``allowed_paths``; no folder is allowed, so nothing new can be created even inside
   the store), no temp folder (``temp_directory=''``: no spill file, and no readable
   ``.tmp/`` folder), no extension install/auto-load, no persistent secrets, and the
   configuration locked so the query cannot undo any of it.

Either layer alone refuses the known escapes (``EXPLAIN ANALYZE COPY ... TO '<store>/...'``,
``ATTACH``, ``read_text('/etc/passwd')``, ``query('...')``); the test corpus in
``tests/storage/test_sql_escapes.py`` checks both and that the store is byte-identical.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa

from storage.schemas import TABLE_SCHEMAS, VIEW_NAMES
from storage.store import Store

__all__ = ["ReadOnlyViolation", "query", "readonly_connection", "check_read_only"]

#: Table functions a read-only query may call: generators and catalog listings only.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_functions",
        "duckdb_keywords",
    }
)
#: System schemas whose (read-only, in-memory) catalog tables may be named.
_SYSTEM_SCHEMAS = frozenset({"information_schema", "pg_catalog"})
_LOCAL_CATALOGS = frozenset({"", "memory"})
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")
_READ_RETRIES = 10  # a part renamed away or dropped between listing and reading: list again


def pause_before_relisting(attempt: int) -> None:
    """Wait before listing the parts again, longer each attempt (10 ms doubling, at most
    0.5 s; about 2 s over every retry). Why: a compaction or retention deletes its old
    parts one by one, and a reader that re-lists at once can find another listed part gone
    on every attempt until the writer is done (seen on a loaded 2-core machine)."""
    time.sleep(min(0.5, 0.01 * 2**attempt))


# Settings fixed when the connection is created (before ``lock_configuration``).
_SANDBOX_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "temp_directory": "",  # no spill files anywhere; queries that need one fail instead
    "max_temp_directory_size": "0KiB",
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "allow_persistent_secrets": False,
    "python_enable_replacements": False,  # `FROM df` must not scan a Python variable
}


class ReadOnlyViolation(ValueError):
    """The SQL would write, attach, copy, change settings or read outside the store."""


_PARSERS: dict[int, duckdb.DuckDBPyConnection] = {}  # one per process (never shared by fork)
_PARSER_LOCK = threading.Lock()


def _new_parser() -> duckdb.DuckDBPyConnection:
    """A bare, locked-down connection used only to parse: user text is only ever a bound
    parameter of ``json_serialize_sql`` or an argument of ``extract_statements`` here."""
    connection = duckdb.connect(":memory:", config=dict(_SANDBOX_CONFIG))
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


@contextmanager
def _parser() -> Iterator[duckdb.DuckDBPyConnection]:
    with _PARSER_LOCK:  # a DuckDB connection serves one thread at a time
        parser = _PARSERS.get(os.getpid())
        if parser is None:
            parser = _PARSERS[os.getpid()] = _new_parser()
        yield parser


def _kind(statement: Any) -> str:
    return str(statement.type).rsplit(".", 1)[-1]


def _one_statement(parser: duckdb.DuckDBPyConnection, sql: str) -> Any:
    try:
        statements = parser.extract_statements(sql)
    except (duckdb.Error, ValueError) as error:  # ValueError: a statement kind unknown to Python
        raise ReadOnlyViolation(f"cannot parse SQL: {error}") from error
    if len(statements) != 1:
        raise ReadOnlyViolation(
            f"expected exactly one statement, got {len(statements)}; run them one at a time"
        )
    return statements[0]


def _explained(sql: str) -> str:
    """The statement an ``EXPLAIN`` explains, or ``ReadOnlyViolation`` for ``EXPLAIN ANALYZE``.

    Uses DuckDB's tokenizer (comments are tokens of their own) to skip ``EXPLAIN`` and its
    options: ``EXPLAIN [ANALYZE|ANALYSE] [(option, ...)] statement``.
    """
    tokens = [
        (position, kind)
        for position, kind in duckdb.tokenize(sql)
        if kind != duckdb.token_type.comment
    ]

    def word(index: int) -> str:
        position = tokens[index][0]
        end = tokens[index + 1][0] if index + 1 < len(tokens) else len(sql)
        return sql[position:end].strip().lower()

    if not tokens or word(0) != "explain":
        raise ReadOnlyViolation("cannot find what EXPLAIN explains")
    index = 1
    if index < len(tokens) and word(index) in ("analyze", "analyse"):
        raise ReadOnlyViolation("EXPLAIN ANALYZE executes its statement and is not allowed here")
    if index < len(tokens) and word(index) == "(":
        depth = 0
        while index < len(tokens):
            text = word(index)
            if text in ("analyze", "analyse"):
                raise ReadOnlyViolation(
                    "EXPLAIN (ANALYZE) executes its statement and is not allowed here"
                )
            depth += text.count("(") - text.count(")")
            index += 1
            if depth <= 0:
                break
    if index >= len(tokens):
        raise ReadOnlyViolation("EXPLAIN without a statement")
    return sql[tokens[index][0] :]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _check_tree(parser: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Walk the SELECT's syntax tree: only store views, CTEs and allow-listed functions."""
    row = parser.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "no parse"}
    if tree.get("error"):
        raise ReadOnlyViolation(f"not a plain query: {tree.get('error_message')}")
    nodes = list(_walk(tree))
    ctes = {
        str(entry.get("key", "")).lower()
        for node in nodes
        if isinstance(node.get("cte_map"), dict)
        for entry in node["cte_map"].get("map", [])
    }
    # CTE names are checked without their scopes, so a CTE may not be named like a file:
    # `WITH "/x.csv" AS (...)` must not let a `FROM '/x.csv'` elsewhere pass as that CTE.
    for name in ctes:
        if not _IDENTIFIER.match(name):
            raise ReadOnlyViolation(f"CTE name {name!r} must be a plain identifier")
    views = {name.lower() for name in VIEW_NAMES}
    for node in nodes:
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS or function.get("schema"):
                raise ReadOnlyViolation(
                    f"table function {name!r} is not allowed here (allowed: "
                    f"{', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}); query the store's views"
                )
        elif kind == "BASE_TABLE":
            table = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name", "")).lower()
            catalog = str(node.get("catalog_name", "")).lower()
            local = catalog in _LOCAL_CATALOGS and schema in ("", "main")
            if not (
                (local and (table in views or table in ctes))
                or (catalog in _LOCAL_CATALOGS | {"system"} and schema in _SYSTEM_SCHEMAS)
            ):
                raise ReadOnlyViolation(
                    f"unknown table {table!r}: query one of the store's views "
                    f"({', '.join(sorted(views))})"
                )


def check_read_only(sql: str) -> None:
    """Raise ``ReadOnlyViolation`` unless ``sql`` is one plain query over the store's views."""
    with _parser() as parser:
        statement = _one_statement(parser, sql)
        if _kind(statement) == "EXPLAIN":
            inner = _one_statement(parser, _explained(statement.query))
            if _kind(inner) != "SELECT":
                raise ReadOnlyViolation(
                    f"EXPLAIN of a {_kind(inner)} statement is not allowed; only queries"
                )
            _check_tree(parser, inner.query)
            return
        if _kind(statement) != "SELECT":
            raise ReadOnlyViolation(
                f"only SELECT queries are allowed here (got {_kind(statement)}); the store is "
                "written by the pipeline, never through SQL"
            )
        _check_tree(parser, statement.query)


def readonly_connection(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory connection with the store's views that can read only the store's parts.

    The views name today's parts explicitly, so the only files this connection may open are
    those parts (``allowed_paths``); no folder is allowed, so it can create no file.
    """
    connection = duckdb.connect(":memory:", config=dict(_SANDBOX_CONFIG))
    try:
        # An s3:// store: DuckDB reads through the store's fsspec filesystem, registered
        # before external access is turned off; allowed_paths still names every object.
        store.register(connection)
        files = {table: store.part_locations(table, for_reader=True) for table in TABLE_SCHEMAS}
        allowed = [location for locations in files.values() for location in locations]
        connection.execute("SET allowed_directories = []")
        connection.execute("SET allowed_paths = $1", [allowed])
        connection.execute("SET enable_external_access = false")
        store._create_views(connection, files)
        connection.execute("SET lock_configuration = true")
    except BaseException:
        connection.close()
        raise
    return connection


def _is_vanished_part(error: Exception) -> bool:
    """A part listed by the connection was removed or replaced before it was read: on
    object storage s3fs refuses to read a replaced object (``FileExpired``: its ETag
    changed), so a reader never mixes bytes of two versions; listing again fixes it."""
    text = str(error)
    if isinstance(error, duckdb.IOException) and (
        "No files found" in text or "No such file" in text or "not exist" in text
    ):
        return True
    # s3fs' FileExpired (replaced) or FileNotFoundError (deleted, e.g. by compaction),
    # raised inside DuckDB's call into the filesystem (a duckdb.Error carrying its text).
    if isinstance(error, duckdb.Error) and "FileNotFoundError" in text:
        return True
    return isinstance(error, (duckdb.Error, OSError)) and "FileExpired" in (
        text + type(error).__name__
    )


_DENIED_FILE = re.compile(r'Cannot access file "([^"]+)"')


def _is_vanished_listed_part(store: Store, error: Exception) -> bool:
    """The sandbox refused a path only because a listed part vanished: DuckDB, finding a
    listed ``.parquet`` file gone (a run dropped or replaced by a writer), retries it as a
    folder (``<part>/**/*.parquet``), which the allow-list refuses. Listing again fixes it;
    any other refused path is a real violation."""
    found = _DENIED_FILE.search(str(error))
    if found is None:
        return False
    path = found.group(1).split("/**/", 1)[0]
    tables = store.locate("tables") + "/"
    return path.endswith(".parquet") and path.startswith(tables) and not store.fs.exists(path)


def query(store: Store, sql: str, parameters: Sequence[object] | None = None) -> pa.Table:
    """Run one read-only statement with bound ``parameters`` (``$1`` or ``?``)."""
    if not store.exists():
        raise FileNotFoundError(f"no store at {store.location}")
    check_read_only(sql)
    for attempt in range(_READ_RETRIES):
        connection: duckdb.DuckDBPyConnection | None = None
        try:
            # Inside the retry: creating the views reads the listed parts' footers already.
            connection = readonly_connection(store)
            return connection.sql(sql, params=list(parameters or [])).to_arrow_table()
        except duckdb.PermissionException as error:
            if attempt + 1 < _READ_RETRIES and _is_vanished_listed_part(store, error):
                pause_before_relisting(attempt)
                continue  # a writer dropped or replaced a part after it was listed
            raise ReadOnlyViolation(f"refused: {error}") from error
        except (duckdb.Error, OSError) as error:
            # A writer replaced a run's folder (or, on object storage, a part) after the
            # parts were listed: list them again.
            if attempt + 1 == _READ_RETRIES or not _is_vanished_part(error):
                raise
            pause_before_relisting(attempt)
        finally:
            if connection is not None:
                connection.close()
    raise AssertionError("unreachable")
