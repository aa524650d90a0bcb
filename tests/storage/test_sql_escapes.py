"""Escape corpus for ``moe sql``: every attempt is refused and the store stays byte-identical."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Store, ingest_jsonl
from storage.sql import ReadOnlyViolation, check_read_only, query, readonly_connection

# {tables}: the store's tables folder; {store}: its root; {secret}: a file outside the store.
ESCAPES: list[str] = [
    # the reproduction and its EXPLAIN variants
    "EXPLAIN ANALYZE COPY (SELECT 1 k) TO '{tables}/series_versions' "
    "(FORMAT parquet, PARTITION_BY (k), OVERWRITE)",
    "explain analyze copy (select 1 k) to '{tables}/series_versions' (format parquet)",
    "EXPLAIN ANALYSE SELECT 1",
    "EXPLAIN ANALYZE SELECT * FROM series",
    "EXPLAIN /* hi */ ANALYZE SELECT 1",
    "EXPLAIN\n--c\nANALYZE\tSELECT 1",
    "EXPLAIN (ANALYZE) SELECT 1",
    "EXPLAIN (FORMAT json, ANALYZE) SELECT 1",
    "EXPLAIN COPY (SELECT 1) TO '{tables}/x.parquet'",
    "EXPLAIN CREATE TABLE t AS SELECT 1",
    "EXPLAIN INSERT INTO t VALUES (1)",
    "EXPLAIN EXPLAIN ANALYZE SELECT 1",
    "EXPLAIN SELECT * FROM read_text('{secret}')",
    # writes and DDL
    "COPY (SELECT * FROM series) TO '{tables}/series_versions/evil.parquet'",
    "CoPy (SELECT 1) TO '{secret}.out'",
    "COPY series_versions FROM '{secret}'",
    "CREATE TABLE t AS SELECT 1",
    "create or replace view series as select 1 as x",
    "DROP VIEW series",
    "INSERT INTO series_versions SELECT * FROM series_versions",
    "UPDATE series_versions SET n_points = 0",
    "DELETE FROM series_versions",
    "ALTER VIEW series RENAME TO s2",
    "EXPORT DATABASE '{tables}'",
    "CHECKPOINT",
    "VACUUM",
    "ANALYZE",
    # other databases, settings, extensions, secrets, prepared statements
    "ATTACH '{tables}/evil.duckdb' AS evil",
    "ATTACH ':memory:' AS m",
    "DETACH memory",
    "USE memory",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "RESET lock_configuration",
    "SET VARIABLE x = 1",
    "PRAGMA version",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "INSTALL httpfs",
    "LOAD httpfs",
    "FORCE INSTALL httpfs",
    "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "BEGIN TRANSACTION",
    "PIVOT series ON freq USING count(*)",
    # more than one statement
    "SELECT 1; SELECT 2",
    "SELECT 1; COPY (SELECT 1) TO '{tables}/x.parquet'",
    "SELECT 1;;DROP VIEW series",
    "/* c */ SELECT 1 -- x\n; CREATE TABLE t(a INT)",
    # table functions and replacement scans reading files
    "SELECT * FROM read_csv('{secret}')",
    "select * from READ_TEXT('{secret}')",
    "SELECT * FROM read_blob('{tables}/series_versions/_empty.parquet')",
    "SELECT * FROM read_parquet('{tables}/series_versions/*.parquet')",
    "SELECT * FROM read_json_auto('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM glob('{store}/**')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM parquet_metadata('{tables}/series_versions/_empty.parquet')",
    "SELECT * FROM main.read_text('{secret}')",
    "SELECT * FROM query('SELECT 1')",
    "SELECT * FROM query_table('series')",
    "SELECT * FROM pragma_database_size()",
    "SELECT * FROM pragma_table_info('series')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM sniff_csv('{secret}')",
    "SELECT * FROM read_text('.tmp/secret')",  # DuckDB's default temp folder was readable
    # nesting: subqueries, CTEs, set operations, lateral, scalar subqueries, comments
    "SELECT * FROM (SELECT * FROM (SELECT * FROM read_text('{secret}')))",
    "WITH x AS (SELECT * FROM read_text('{secret}')) SELECT * FROM x",
    "WITH x AS MATERIALIZED (FROM glob('/*')) FROM x",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM read_csv('{secret}'), r) "
    "SELECT * FROM r",
    "SELECT 1 UNION ALL SELECT content FROM read_text('{secret}')",
    "SELECT (SELECT count(*) FROM glob('/*'))",
    "SELECT * FROM series WHERE series_id IN (SELECT filename FROM read_text('{secret}'))",
    "SELECT * FROM series, LATERAL (SELECT * FROM query('SELECT 1'))",
    "SELECT/**/*/**/FROM/**/read_text('{secret}')",
    "FROM read_text('{secret}')",
    "WITH series AS (SELECT 1) SELECT * FROM evil_table",
    "SELECT * FROM (WITH \"{secret}\" AS (SELECT 1) SELECT 1), '{secret}'",
    "SELECT * FROM hostile",  # a Python variable of that name must not be scanned
    "SELECT * FROM evil_db.main.series",
    "SELECT * FROM temp.main.t",
    # not SQL at all
    "",
    "   ",
    "-- only a comment",
    "SELEC 1",
]


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and every folder, as an empty digest)."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        found[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Path]:
    root = tmp_path_factory.mktemp("escape")
    store = Store.open(root / "store")
    data = root / "d.jsonl"
    data.write_text(
        '{"series_id": "a", "sequence": [1, 2]}\n{"series_id": "b", "sequence": [3]}\n{"x": 1}\n'
    )
    ingest_jsonl(store, data)
    secret = root / "secret.csv"
    secret.write_text("token\nhunter2\n")
    return store, secret


def _fill(template: str, store: Store, secret: Path) -> str:
    return template.format(tables=store.tables_dir, store=store.root, secret=secret)


def test_corpus_has_at_least_fifty_attempts() -> None:
    """The issue asks for >= 50 distinct escape attempts."""
    assert len(set(ESCAPES)) >= 50


@pytest.mark.parametrize("template", ESCAPES)
def test_escape_is_refused_and_store_unchanged(
    hostile: tuple[Store, Path], template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each attempt raises ReadOnlyViolation; no file of the store (or the cwd) changes."""
    store, secret = hostile
    monkeypatch.chdir(tmp_path)  # DuckDB's default temp folder would be ./.tmp
    before = _hashes(store.root)
    with pytest.raises(ReadOnlyViolation):
        query(store, _fill(template, store, secret))
    assert _hashes(store.root) == before
    assert list(tmp_path.iterdir()) == []


_FILE_ATTEMPTS = [
    "COPY (SELECT 1 k) TO '{tables}/series_versions' (FORMAT parquet, PARTITION_BY (k), OVERWRITE)",
    "COPY (SELECT 1 k) TO '{tables}/series_versions/_empty.parquet' (FORMAT parquet)",
    "COPY (SELECT 1 k) TO '{store}/x.csv'",
    "ATTACH '{tables}/evil.duckdb' AS evil",
    "SELECT * FROM read_text('{secret}')",
    "SELECT * FROM glob('{tables}/*')",
    "SELECT * FROM read_parquet('{tables}/series_versions/*.parquet')",
    "EXPORT DATABASE '{tables}/export'",
    "SELECT * FROM read_text('.tmp/secret')",
    "SET allowed_paths = ['/']",
    "SET enable_external_access = true",
    "INSTALL httpfs",
]


@pytest.mark.parametrize("template", _FILE_ATTEMPTS)
def test_sandbox_alone_refuses_file_access(
    hostile: tuple[Store, Path], template: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the statement check, the connection itself cannot write, list or read files."""
    store, secret = hostile
    monkeypatch.chdir(tmp_path)
    before = _hashes(store.root)
    connection = readonly_connection(store)
    try:
        with pytest.raises(duckdb.Error):
            connection.execute(_fill(template, store, secret)).fetchall()
    finally:
        connection.close()
    assert _hashes(store.root) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM series",
        "select * from series where series_id = 'a'",
        "EXPLAIN SELECT * FROM series",
        "EXPLAIN (FORMAT json) SELECT 1",
        "WITH x AS (SELECT * FROM series) SELECT count(*) FROM x",
        "DESCRIBE series",
        "SHOW TABLES",
        "SUMMARIZE series",
        "SELECT * FROM range(3)",
        "SELECT * FROM information_schema.columns WHERE table_name = 'series'",
        "/* a comment */ FROM ingest_rejects -- trailing",
        "SELECT 1;",
    ],
)
def test_plain_queries_still_run(hostile: tuple[Store, Path], sql: str) -> None:
    """The guard is not so strict that ordinary analyst queries fail."""
    store, _ = hostile
    assert query(store, sql).num_columns >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(["", " ", "\n", "/* x */", "-- c\n", "(", "EXPLAIN "]),
    body=st.sampled_from(
        [
            "COPY (SELECT 1) TO 'x'",
            "CREATE TABLE t(a INT)",
            "DROP VIEW series",
            "ATTACH 'x'",
            "SET threads = 1",
            "INSTALL x",
            "EXPLAIN ANALYZE SELECT 1",
            "PRAGMA version",
        ]
    ),
    casing=st.sampled_from([str.upper, str.lower, str.swapcase, lambda s: s]),
)
def test_fuzzed_writes_never_pass_the_check(prefix: str, body: str, casing: object) -> None:
    """Decorated write statements (case, comments, parentheses, EXPLAIN) never pass."""
    text = prefix + casing(body)  # type: ignore[operator]
    with pytest.raises(ReadOnlyViolation):
        check_read_only(text)


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_passes_only_as_a_plain_query(text: str) -> None:
    """Any text either fails the check or is a SELECT over allowed names (never a crash)."""
    try:
        check_read_only(text)
    except ReadOnlyViolation:
        return
    statements = duckdb.connect().extract_statements(text)
    assert len(statements) == 1 and str(statements[0].type).endswith("SELECT")


def test_no_temp_folder_is_created(hostile: tuple[Store, Path], tmp_path: Path) -> None:
    """A big sort does not spill to ./.tmp (the sandbox has no temp folder)."""
    store, _ = hostile
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        query(store, "SELECT count(*) FROM (SELECT range AS r FROM range(200000) ORDER BY r DESC)")
    finally:
        os.chdir(cwd)
    assert not (tmp_path / ".tmp").exists()


def test_sandbox_does_not_scan_python_variables(hostile: tuple[Store, Path]) -> None:
    """DuckDB's Python replacement scan (FROM <variable>) is off in the sandbox."""
    import pandas as pd

    store, _ = hostile
    leak = pd.DataFrame({"secret": ["hunter2"]})  # noqa: F841 - the name is the attack
    connection = readonly_connection(store)
    try:
        with pytest.raises(duckdb.CatalogException):
            connection.sql("SELECT * FROM leak").fetchall()
    finally:
        connection.close()
