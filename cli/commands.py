"""The ``moe`` command line: one subcommand per thing users do every week.

``moe demo``            the main job on the embedded default (bundled sample, local store,
                        local Prefect): ingest, retrain, batch forecast, a SQL query
``moe ingest FILE...``  JSONL / JSONL.gz into the store
``moe retrain`` / ``moe forecast`` / ``moe evaluate``  one run of a flow
``moe models list|promote|rollback``  the model registry
``moe serve``           register the scheduled deployments and run them (needs a server)
``moe api``             the HTTP service: forecasts with the champion, registry, monitoring
``moe alerts webhook URL``  send every alert (Prefect event moe.alert.*) to a webhook
``moe sql "SELECT ..."`` read-only SQL over the store's views
``moe store catalog``   (re)write catalog.duckdb for the DuckDB CLI
``moe train`` / ``moe predict``  the seed's command line (same flags as main.py)

User errors (a bad path, bad JSON, an unknown series, no champion, a busy store...) print
one line, ``error: <what is wrong and what to do>``, and exit 2; ``--debug`` adds the
traceback. Read-only commands never create a store: a mistyped ``--store`` says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import duckdb
import pyarrow as pa
from pydantic import ValidationError

from storage import IngestError, IngestReport, Store, ingest_jsonl
from storage.registry import RegistryError
from storage.schemas import COMPACTABLE
from storage.sql import ReadOnlyViolation, query
from storage.store import StoreBusy, StoreNotFound

if TYPE_CHECKING:  # the configs import torch; the CLI imports them only when a job needs them
    from pipeline.config import DaskConfig, ForecastConfig, RetrainConfig

__all__ = ["main", "format_table", "sample_path"]

_MAX_REJECTS_SHOWN = 20


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit 2."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that describe bad input or a refused request, not a bug.

    ``ValueError`` covers ``ArtifactError``, pydantic-free config checks and messages such
    as "no training windows: ingest longer series"; ``KeyError``/``IndexError`` stay bugs.
    """
    return (
        UserError,
        IngestError,
        ReadOnlyViolation,
        RegistryError,
        StoreNotFound,
        StoreBusy,
        NotADirectoryError,
        FileNotFoundError,
        PermissionError,
        ValidationError,
        duckdb.Error,
        ValueError,
    )


def one_line(error: BaseException) -> str:
    """``error`` as one line: pydantic errors as ``field: problem; ...``."""
    if isinstance(error, ValidationError):
        parts = []
        for item in error.errors():
            where = ".".join(str(p) for p in item["loc"]) or "config"
            parts.append(f"{where}: {item['msg']}")
        text = (
            f"invalid {error.title}: " + "; ".join(parts) + " (the fields and their limits "
            "are described in pipeline/config.py)"
        )
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def sample_path() -> Path:
    """The bundled real sample: 300 M3 monthly series (see scripts/make_sample_data.py)."""
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
        # By the file's digest: a re-ingest stores no reject twice, so its own id has none.
        out(
            f'... and {more} more: moe sql "SELECT line_number, field, reason FROM '
            f"ingest_rejects WHERE file_sha256 = '{report.file_sha256}' ORDER BY line_number\""
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
            print(f"error: {one_line(error)}", file=sys.stderr)
            status = 2
            continue
        _print_ingest(report, print)
        if report.rejected and args.strict:
            status = max(status, 3)
    return status


def _cmd_sql(args: argparse.Namespace) -> int:
    store = Store.open_existing(args.store)
    parameters = []
    for index, text in enumerate(args.param, start=1):
        try:
            parameters.append(json.loads(text))
        except json.JSONDecodeError as error:
            raise UserError(
                f"--param number {index} ({text!r}) is not JSON ({error.msg}); quote strings "
                """as JSON, e.g. --param '"abc"'"""
            ) from error
    table = query(store, args.query, parameters)
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
    if args.action != "compact" and (args.keep_versions is not None or args.table):
        raise UserError("--keep-versions and --table are options of `moe store compact`")
    if args.action == "catalog" and (args.days is not None or args.dry_run):
        raise UserError("--days and --dry-run are options of `moe store retain` and `compact`")
    store = Store.open_existing(args.store)
    if args.action == "compact":
        return _compact(store, args)
    if args.action == "retain":
        from datetime import timedelta

        from storage.retention import expire_forecast_runs

        days = 90.0 if args.days is None else args.days
        report = expire_forecast_runs(
            store, timedelta(days=days), keep_runs=args.keep_runs, dry_run=args.dry_run
        )
        verb = "would drop" if args.dry_run else "dropped"
        print(
            f"forecast runs created before {report.cutoff:%Y-%m-%d %H:%M} UTC: {verb} "
            f"{len(report.dropped)} {report.dropped}; kept {len(report.kept_latest)} that "
            f"still hold a series' latest forecast and {len(report.kept_newest)} of the "
            f"newest {args.keep_runs}"
        )
        return 0
    path = store.write_catalog()
    print(f"wrote {path}; open it with: duckdb -readonly {path}")
    return 0


def _compact(store: Store, args: argparse.Namespace) -> int:
    from datetime import timedelta

    from storage.compaction import compact_store

    older = None if args.days is None else timedelta(days=args.days)
    reports = compact_store(
        store,
        args.table or None,
        keep_versions=args.keep_versions,
        older_than=older,
        dry_run=args.dry_run,
    )
    verb = "would rewrite" if args.dry_run else "rewrote"
    for report in reports:
        if report.parts_before == report.parts_after and not report.versions_dropped:
            print(f"{report.table}: {report.parts_before} part(s), nothing to do")
            continue
        dropped = (
            f", {report.versions_dropped} superseded version(s) expired"
            if report.table == "series_versions"
            else ""
        )
        print(
            f"{report.table}: {verb} {report.parts_before} part(s) as {report.parts_after}; "
            f"{report.rows_before} -> {report.rows_after} rows{dropped}"
        )
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
    if not os.environ.get("PREFECT_API_URL"):  # Prefect will start a temporary server
        from flows.server_guard import install

        install()  # ...which then dies with this process, even on kill -9


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded default: ingest, retrain, forecast, query - via Prefect."""
    _prefect_env()
    from flows.jobs import batch_forecast, retrain
    from pipeline.config import RetrainConfig

    store = Store.open(args.store)
    print(f"store: {store.location}")
    chosen = {"experts": args.experts.split(",")} if args.experts else {}
    config = RetrainConfig(jsonl_paths=[str(sample_path())], **chosen)
    outcome = retrain(config=config, store=store.location)  # forecasts when promoted
    print(f"retrain: {outcome}")
    if not outcome["promoted"]:  # keep the champion, but still refresh its forecasts
        print(f"batch forecast: {batch_forecast(store=store.location)}")
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


def _parse_retrain_config(args: argparse.Namespace) -> RetrainConfig:
    from pipeline.config import RetrainConfig

    config = RetrainConfig.model_validate_json(args.config) if args.config else RetrainConfig()
    if args.jsonl:
        config = RetrainConfig.model_validate({**config.model_dump(), "jsonl_paths": args.jsonl})
    if args.season_length is not None:  # forces one period for every series
        config = RetrainConfig.model_validate(
            {**config.model_dump(), "season_length": args.season_length}
        )
    dask = _dask(args)  # --dask overrides the config's; without it the config's stands
    if dask is not None:
        config = RetrainConfig.model_validate({**config.model_dump(), "dask": dask})
    for path in config.jsonl_paths:
        if path != "-" and not Path(path).exists():
            raise UserError(f"{path}: no such file (given in --jsonl or the config's jsonl_paths)")
    return config


def _cmd_retrain(args: argparse.Namespace) -> int:
    config = _parse_retrain_config(args)  # checked before Prefect starts
    store = Store.open(args.store)
    _prefect_env()
    from flows.jobs import retrain

    print(retrain(config=config, store=store.location))
    return 0


def _cmd_forecast(args: argparse.Namespace) -> int:
    from pipeline.config import ForecastConfig

    config = ForecastConfig(
        series_ids=args.series or None,
        model_version=args.model_version,
        run_id=args.run_id,
        dask=_dask(args),
    )
    store = Store.open_existing(args.store)
    _check_forecast(store, config)  # a user error here prints one line, before Prefect starts
    _prefect_env()
    from flows.jobs import batch_forecast

    print(batch_forecast(config=config, store=store.location))
    return 0


def _dask(args: argparse.Namespace) -> DaskConfig | None:
    """``--dask`` and its companions as the jobs' ``dask`` setting (None: in-process)."""
    from pipeline.config import DaskConfig

    if args.dask is None:
        if args.dask_workers is not None or args.shards is not None:
            raise UserError("--dask-workers and --shards need --dask (local or an address)")
        return None
    settings: dict[str, object] = {"address": args.dask, "shards": args.shards}
    if args.dask_workers is not None:
        settings["workers"] = args.dask_workers
    return DaskConfig.model_validate(settings)


def _add_dask_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--dask",
        default=None,
        metavar="local|ADDRESS",
        help=f"shard {what} over Dask: 'local' starts a LocalCluster here, else a scheduler "
        "address like tcp://host:8786 (default: in this process)",
    )
    parser.add_argument(
        "--dask-workers",
        type=_positive_int,
        default=None,
        help="worker processes of the local cluster (default 2)",
    )
    parser.add_argument(
        "--shards",
        type=_positive_int,
        default=None,
        help="Dask tasks per step (default: two per worker thread)",
    )


def _check_forecast(store: Store, config: ForecastConfig) -> None:
    from pipeline.forecast import choose_model
    from pipeline.models import check_registered_checkpoints, load_verified_artifact
    from storage.registry import champion

    if config.model_version is None and champion(store) is None:
        raise UserError(
            f"the store {store.location} has no champion model yet: run `moe retrain` first "
            "(or pass --model-version VERSION)"
        )
    model = choose_model(store, config.model_version)
    check_registered_checkpoints(store, load_verified_artifact(store, model))
    if config.series_ids:
        known = query(
            store,
            "SELECT series_id FROM series WHERE list_contains($1, series_id)",
            [list(config.series_ids)],
        ).column(0)
        unknown = sorted(set(config.series_ids) - set(known.to_pylist()))
        if unknown:
            raise UserError(
                f"{len(unknown)} requested series are not in the store: {unknown[:5]}; "
                'list them with: moe sql "SELECT series_id FROM series"'
            )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    store = Store.open_existing(args.store)
    _prefect_env()
    from flows.jobs import evaluate

    print(evaluate(store=store.location))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from storage.registry import promote, rollback

    store = Store.open_existing(args.store)
    if args.action == "promote":
        if not args.version:
            raise UserError("which version? moe models promote VERSION (see moe models list)")
        promote(store, args.version, args.reason or "manual promotion")
    elif args.action == "rollback":
        rollback(store, args.reason or "manual rollback")
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

    serve_all(timezone=args.timezone, store=args.store, dask=_dask(args))
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    from serving import TOKEN_ENV_VAR, serve

    store = Store.open_existing(args.store)  # serving never creates a store
    token_note = (
        f"bearer token from {TOKEN_ENV_VAR}" if os.environ.get(TOKEN_ENV_VAR) else "no token"
    )
    address = f"http://{args.host}:{args.port}"
    print(f"moe api: store {store.location}, {address} ({token_note})", flush=True)
    serve(store, args.host, args.port, args.device)
    return 0


def _cmd_alerts(args: argparse.Namespace) -> int:
    from flows.alerts import setup_webhook

    automation = setup_webhook(args.url, args.name)
    print(f"automation {automation} ({args.name}): every moe.alert.* event is posted to {args.url}")
    return 0


def _cmd_seed(mode: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from moe.seed.cli import run as run_seed  # torch is imported only for these commands

        return run_seed(["--mode", mode, *args.seed_args])

    return run


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moe", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--store", default=None, help="store folder (default: $MOE_STORE or ./moe_store)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, not one line"
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
    _add_dask_options(retrain, "the expert cache and the forecast after a promotion")
    retrain.set_defaults(run=_cmd_retrain)

    forecast = commands.add_parser("forecast", help="run the batch-forecast flow once")
    forecast.add_argument("--series", nargs="*", default=[], help="series ids (default: all)")
    forecast.add_argument("--model-version", default=None)
    forecast.add_argument("--run-id", default=None, help="rerun an id to replace its rows")
    _add_dask_options(forecast, "the series")
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
    _add_dask_options(serve, "the retrain's expert cache and the batch forecast by default")
    serve.set_defaults(run=_cmd_serve)

    api = commands.add_parser("api", help="serve forecasts, the registry and monitoring over HTTP")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost)")
    api.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    api.add_argument("--device", default="cpu", help="'cpu' or 'cuda[:n]' for experts and gate")
    api.set_defaults(run=_cmd_api)
    alerts = commands.add_parser("alerts", help="where alerts go (needs a Prefect server)")
    alert_commands = alerts.add_subparsers(dest="alerts_command", required=True)
    webhook = alert_commands.add_parser("webhook", help="post every alert to this URL")
    webhook.add_argument("url", help="the webhook URL (JSON POST with subject and body)")
    webhook.add_argument("--name", default="moe-alerts", help="block and automation name")
    webhook.set_defaults(run=_cmd_alerts)
    ingest = commands.add_parser("ingest", help="ingest JSONL or JSONL.gz files")
    ingest.add_argument("files", nargs="+")
    ingest.add_argument("--chunk-lines", type=_positive_int, default=10_000)
    ingest.add_argument("--strict", action="store_true", help="exit 3 when a line is rejected")
    ingest.set_defaults(run=_cmd_ingest)

    sql = commands.add_parser("sql", help="run one read-only SQL query")
    sql.add_argument("query")
    sql.add_argument(
        "--param", action="append", default=[], help="a JSON value bound to $1, $2, ... in order"
    )
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sql.add_argument("--max-rows", type=_positive_int, default=50)
    sql.set_defaults(run=_cmd_sql)

    store = commands.add_parser(
        "store",
        help="store maintenance: catalog (for the DuckDB CLI), retain (old forecast runs), "
        "compact (small parts into one; superseded series versions)",
    )
    store.add_argument("action", choices=["catalog", "retain", "compact"])
    store.add_argument(
        "--days",
        type=_non_negative_float,
        default=None,
        help="retain: keep runs this recent (default 90); compact: expire series versions "
        "superseded more than this many days ago (default: keep every version)",
    )
    store.add_argument(
        "--keep-runs", type=_non_negative_int, default=1, help="retain: newest runs always kept"
    )
    store.add_argument(
        "--keep-versions",
        type=_positive_int,
        default=None,
        help="compact: newest versions of each series always kept (>= 1; the latest always "
        "stays); with --days, older ones go only once superseded that long",
    )
    store.add_argument(
        "--table",
        action="append",
        choices=list(COMPACTABLE),
        help="compact: only this table (repeatable; default: every compactable table)",
    )
    store.add_argument(
        "--dry-run", action="store_true", help="retain, compact: only say what would change"
    )
    store.set_defaults(run=_cmd_store)

    for mode in ("train", "predict"):
        seed = commands.add_parser(mode, help=f"the seed's --mode {mode} (see main.py --help)")
        seed.add_argument("seed_args", nargs=argparse.REMAINDER)
        seed.set_defaults(run=_cmd_seed(mode))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        if isinstance(error, _user_error_types()):
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 2
        print(
            f"internal error: {type(error).__name__}: {one_line(error)} "
            "(rerun with --debug for the traceback, and report it)",
            file=sys.stderr,
        )
        return 1
