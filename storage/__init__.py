"""The store: Parquet parts as the system of record, DuckDB views for SQL. No torch here."""

from storage.ingest import IngestError, IngestReport, ingest_jsonl
from storage.store import DEFAULT_STORE_DIR, STORE_ENV_VAR, Store, resolve_store_root

__all__ = [
    "Store",
    "resolve_store_root",
    "DEFAULT_STORE_DIR",
    "STORE_ENV_VAR",
    "ingest_jsonl",
    "IngestReport",
    "IngestError",
]
