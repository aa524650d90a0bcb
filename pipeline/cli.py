"""The ``moe`` command line: one subcommand per thing users do every week.

``moe demo``            the main job on the embedded default (bundled sample, local store,
                        local Prefect): ingest, retrain, batch forecast, a SQL query
``moe ingest FILE...``  JSONL / JSONL.gz into the store
``moe retrain`` / ``moe forecast`` / ``moe evaluate``  one run of a flow
``moe models list|promote|rollback``  the model registry
``moe serve``           register the scheduled deployments and run them (needs a server)
``moe sql "SELECT ..."`` read-only SQL over the store's views
``moe store catalog``   (re)write catalog.duckdb for the DuckDB CLI
``moe train`` / ``moe predict``  the seed's command line (same flags as main.py)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import pyarrow as pa

from storage import IngestError, IngestReport, Store, ingest_jsonl
from storage.sql import ReadOnlyViolation, query

__all__ = ["main", "format_table", "sample_path"]

_MAX_REJECTS_SHOWN = 20


def sample_path() -> Path:
    """The bundled real sample: 300 M3 monthly series (see tools/make_sample_data.py)."""
    return Path(str(resources.files("pipeline") / "sample_data" / "m3_monthly_sample.jsonl.gz"))


def format_table(table: pa.Table, max_rows: int = 50, max_width: int = 40) -> str:
    """Render an Arrow table as aligned text (what ``moe sql`` prints)."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(value: object) -> str:
        text = "NULL" if value is None else str(value)
        return text if len(text) <= max_width else text[: max_width - 3] + "..."

    body = [[cell(row[name]) for name in names] for row in rows]
    widths = [max([len(name)] + [len(r[i]) for r in body]) for i, name in enumerate(names)]
    lines = [
        "  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True)),
        "  ".join("-" * width for width in widths),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
    shown = f"{len(rows)} of {table.num_rows} rows" if table.num_rows > len(rows) else None
    lines.append(f"({shown or f'{table.num_rows} rows'})")
    return "\n".join(lines)


def _print_ingest(report: IngestReport, out: Callable[[str], None]) -> None:
    for rejected in report.rejects[:_MAX_REJECTS_SHOWN]:
        out(f"rejected {rejected.describe(report.source_file)}")
    if report.rejected > _MAX_REJECTS_SHOWN:
        more = report.rejected - _MAX_REJECTS_SHOWN
        out(
            f'... and {more} more: moe sql "SELECT * FROM ingest_rejects WHERE ingest_id = '
            f"'{report.ingest_id}'\""
        )
    records = report.accepted + report.rejected
    out(
        f"{report.source_file}: {report.lines_read} lines read = {report.blank_lines} blank + "
        f"{report.accepted} accepted + {report.rejected} rejected "
        f"(accepted: {report.new_series} new series, {report.new_versions} new versions, "
        f"{report.unchanged} unchanged)"
    )
    if report.lines_read == 0:
        out(f"{report.source_file}: the file is empty")
    elif records == 0:
        out(f"{report.source_file}: only blank lines")


def _cmd_ingest(args: argparse.Namespace) -> int:
    store = Store.open(args.store)
    status = 0
    for path in args.files:
        try:
            report = ingest_jsonl(store, path, chunk_lines=args.chunk_lines)
        except IngestError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        _print_ingest(report, print)
        if report.rejected and args.strict:
            status = max(status, 3)
    return status


def _cmd_sql(args: argparse.Namespace) -> int:
    store = Store.open(args.store)
    try:
        table = query(store, args.query, [json.loads(p) for p in args.param])
    except ReadOnlyViolation as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # DuckDB's own message (unknown column, syntax) is the best one
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(table.column_names)
        writer.writerows([list(row.values()) for row in table.to_pylist()])
    elif args.format == "json":
        print(json.dumps(table.to_pylist(), default=str, indent=1))
    else:
        print(format_table(table, max_rows=args.max_rows))
    return 0


def _cmd_store(args: argparse.Namespace) -> int:
    store = Store.open(args.store)
    path = store.write_catalog()
    print(f"wrote {path}; open it with: duckdb -readonly {path}")
    return 0


_DEMO_QUERY = """
SELECT series_id, step, round(point, 1) AS point, round(q05, 1) AS q05, round(q95, 1) AS q95,
       expert_1, round(weight_1, 2) AS weight_1, expert_2, round(weight_2, 2) AS weight_2
FROM latest_forecasts
WHERE series_id IN (SELECT DISTINCT series_id FROM latest_forecasts ORDER BY 1 LIMIT 2)
ORDER BY series_id, step
"""


def _prefect_env() -> None:
    """Local Prefect defaults (design.md: the ephemeral server is slow to start here)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: ingest, retrain, forecast, query - via Prefect."""
    _prefect_env()
    from flows.jobs import batch_forecast, retrain
    from pipeline.config import RetrainConfig

    store = Store.open(args.store)
    print(f"store: {store.root}")
    chosen = {"experts": args.experts.split(",")} if args.experts else {}
    config = RetrainConfig(jsonl_paths=[str(sample_path())], **chosen)
    outcome = retrain(config=config, store=str(store.root))  # forecasts when promoted
    print(f"retrain: {outcome}")
    if not outcome["promoted"]:  # keep the champion, but still refresh its forecasts
        print(f"batch forecast: {batch_forecast(store=str(store.root))}")
    print(f"\n{_DEMO_QUERY.strip()}\n")
    print(format_table(query(store, _DEMO_QUERY), max_rows=40))
    print(
        format_table(
            query(
                store,
                "SELECT model, round(mase, 4) AS mase, round(smape, 2) AS "
                "smape, rank FROM leaderboard WHERE run_id = (SELECT "
                "max_by(run_id, created_at) FROM backtest_metrics) "
                "ORDER BY rank",
            )
        )
    )
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.jobs import retrain
    from pipeline.config import RetrainConfig

    config = RetrainConfig.model_validate_json(args.config) if args.config else RetrainConfig()
    if args.jsonl:
        config = RetrainConfig.model_validate({**config.model_dump(), "jsonl_paths": args.jsonl})
    if args.season_length is not None:  # forces one period for every series
        config = RetrainConfig.model_validate(
            {**config.model_dump(), "season_length": args.season_length}
        )
    print(retrain(config=config, store=args.store))
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.jobs import batch_forecast
    from pipeline.config import ForecastConfig

    config = ForecastConfig(
        series_ids=args.series or None, model_version=args.model_version, run_id=args.run_id
    )
    print(batch_forecast(config=config, store=args.store))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.jobs import evaluate

    print(evaluate(store=args.store))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from storage.registry import RegistryError, promote, rollback

    store = Store.open(args.store)
    try:
        if args.action == "promote":
            if not args.version:
                print("error: moe models promote VERSION", file=sys.stderr)
                return 2
            promote(store, args.version, args.reason or "manual promotion")
        elif args.action == "rollback":
            rollback(store, args.reason or "manual rollback")
    except RegistryError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    table = query(
        store,
        "SELECT model_version, status, last_event, gate_kind, expert_keys, input_length, "
        "pred_length, round(backtest_mase, 4) AS backtest_mase, created_at "
        "FROM model_registry ORDER BY created_at DESC",
    )
    print(format_table(table))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    _prefect_env()
    from flows.serve import serve_all

    serve_all(timezone=args.timezone, store=args.store)
    return 0


def _cmd_seed(mode: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from moe.seed_cli import run as run_seed  # torch is imported only for these commands

        return run_seed(["--mode", mode, *args.seed_args])

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", default=None, help="store folder (default: $MOE_STORE or ./moe_store)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="the main job on the bundled sample: ingest, retrain, forecast, SQL"
    )
    demo.add_argument("--experts", help="comma-separated expert names (default: offline set)")
    demo.set_defaults(run=_cmd_demo)

    retrain = commands.add_parser("retrain", help="run the retrain flow once")
    retrain.add_argument("--jsonl", nargs="*", default=[], help="files to ingest first")
    retrain.add_argument("--config", help="RetrainConfig as JSON (see pipeline/config.py)")
    retrain.add_argument(
        "--season-length",
        type=int,
        default=None,
        help="force this seasonal period for every series (default: per series, from its "
        "freq, else detected from its values)",
    )
    retrain.set_defaults(run=_cmd_retrain)

    forecast = commands.add_parser("forecast", help="run the batch-forecast flow once")
    forecast.add_argument("--series", nargs="*", default=[], help="series ids (default: all)")
    forecast.add_argument("--model-version", default=None)
    forecast.add_argument("--run-id", default=None, help="rerun an id to replace its rows")
    forecast.set_defaults(run=_cmd_forecast)

    evaluate = commands.add_parser("evaluate", help="score past forecasts against actuals")
    evaluate.set_defaults(run=_cmd_evaluate)

    models = commands.add_parser("models", help="the model registry")
    models.add_argument("action", choices=["list", "promote", "rollback"])
    models.add_argument("version", nargs="?")
    models.add_argument("--reason", default=None)
    models.set_defaults(run=_cmd_models)

    serve = commands.add_parser("serve", help="register the scheduled deployments and serve them")
    serve.add_argument(
        "--timezone", default=None, help="schedule timezone (default $MOE_TIMEZONE or UTC)"
    )
    serve.set_defaults(run=_cmd_serve)

    ingest = commands.add_parser("ingest", help="ingest JSONL or JSONL.gz files")
    ingest.add_argument("files", nargs="+")
    ingest.add_argument("--chunk-lines", type=int, default=10_000)
    ingest.add_argument("--strict", action="store_true", help="exit 3 when a line is rejected")
    ingest.set_defaults(run=_cmd_ingest)

    sql = commands.add_parser("sql", help="run one read-only SQL query")
    sql.add_argument("query")
    sql.add_argument(
        "--param", action="append", default=[], help="a JSON value bound to $1, $2, ... in order"
    )
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--max-rows", type=int, default=50)
    sql.set_defaults(run=_cmd_sql)

    store = commands.add_parser("store", help="store maintenance")
    store.add_argument("action", choices=["catalog"])
    store.set_defaults(run=_cmd_store)

    for mode in ("train", "predict"):
        seed = commands.add_parser(mode, help=f"the seed's --mode {mode} (see main.py --help)")
        seed.add_argument("seed_args", nargs=argparse.REMAINDER)
        seed.set_defaults(run=_cmd_seed(mode))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
