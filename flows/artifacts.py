"""What the Prefect UI shows for a run: metrics tables, routing shares, a plot, links."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from pipeline.evaluate import EvaluationResult
from pipeline.forecast import ForecastRun
from pipeline.retrain import RetrainResult
from storage.ingest import IngestReport
from storage.sql import query
from storage.store import Store

__all__ = ["publish_ingest", "publish_retrain", "publish_forecast", "publish_evaluation"]


def _clean(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def publish_ingest(reports: Sequence[IngestReport]) -> None:
    rows = [
        {k: v for k, v in r.as_dict().items() if k not in ("rejects", "ingest_id")} for r in reports
    ]
    create_table_artifact(
        rows, key="ingest-counts", description="lines read = blank + accepted + rejected"
    )


def publish_retrain(result: RetrainResult) -> None:
    overall = result.scores.overall()
    leaderboard = sorted(
        (
            {"model": m, **{k: _clean(v) for k, v in metrics.items()}}
            for m, metrics in overall.items()
        ),
        key=lambda row: (row["mase"] is None, row["mase"]),
    )
    create_table_artifact(
        leaderboard,
        key="backtest-leaderboard",
        description=f"Backtest on held-out windows, model {result.model_version}",
    )
    verdict = "promoted to champion" if result.promoted else "kept as archived challenger"
    kind = "learned gate" if result.candidate == "gate" else "constant-pair fallback"
    create_markdown_artifact(
        f"### Model {result.model_version} ({kind}): {verdict}\n\n{result.reason}\n\n"
        f"Artifact: `{result.artifact_path}`",
        key="retrain-decision",
    )
    create_link_artifact(
        f"file://{result.artifact_path}",
        link_text=f"{result.model_version}.pt",
        key="model-artifact",
    )


def _plot_png(
    store: Store, run_id: str, n_series: int = 4, show_actuals: bool = False
) -> bytes | None:
    """History, forecast and 90% band of a few series of ``run_id`` (and, with
    ``show_actuals``, the values that arrived after the forecast origin) as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = query(
        store,
        """
        WITH chosen AS (SELECT DISTINCT series_id FROM forecasts WHERE run_id = $1
                        ORDER BY series_id LIMIT $2)
        SELECT f.series_id, f.origin_index, list(f.point ORDER BY f.step) AS point,
               list(f.q05 ORDER BY f.step) AS q05, list(f.q95 ORDER BY f.step) AS q95,
               any_value(s.values) AS history
        FROM forecasts f JOIN chosen USING (series_id) JOIN series s USING (series_id)
        WHERE f.run_id = $1 GROUP BY f.series_id, f.origin_index ORDER BY f.series_id
        """,
        [run_id, n_series],
    ).to_pylist()
    if not rows:
        return None
    figure, axes = plt.subplots(len(rows), 1, figsize=(8, 2.2 * len(rows)), squeeze=False)
    for axis, row in zip(axes[:, 0], rows, strict=True):
        history = row["history"][: row["origin_index"]][-60:]
        start = row["origin_index"] - len(history)
        steps = range(row["origin_index"], row["origin_index"] + len(row["point"]))
        axis.plot(range(start, row["origin_index"]), history, color="black", lw=1)
        axis.plot(steps, row["point"], color="tab:blue", lw=1.5, label="forecast")
        if show_actuals:
            end = row["origin_index"] + len(row["point"])
            actual = row["history"][row["origin_index"] : end]
            axis.plot(steps[: len(actual)], actual, color="tab:red", lw=1, ls="--", label="actual")
            axis.legend(fontsize=7, loc="upper left")
        if None not in row["q05"] and None not in row["q95"]:
            axis.fill_between(steps, row["q05"], row["q95"], color="tab:blue", alpha=0.2)
        axis.set_title(row["series_id"], fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def publish_forecast(store: Store, run: ForecastRun) -> None:
    total = max(1, sum(run.expert_usage.values()))
    create_table_artifact(
        [
            {"expert": name, "series": count, "share": round(count / total, 4)}
            for name, count in sorted(run.expert_usage.items(), key=lambda kv: -kv[1])
        ],
        key="routing-shares",
        description=f"How often each expert was one of the two chosen (run {run.run_id})",
    )
    png = _plot_png(store, run.run_id)
    if png is not None:
        # beside a local store; an s3:// store keeps the plot in the artifact only
        plots = store.scratch_dir() / "plots" if store.remote else store.root / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        path = plots / f"{run.run_id}.png"
        path.write_bytes(png)
        encoded = base64.b64encode(png).decode()
        create_markdown_artifact(
            f"### Forecasts of run {run.run_id} (model {run.model_version})\n\n"
            f"![forecast plot](data:image/png;base64,{encoded})\n\nFile: `{path}`",
            key="forecast-plot",
        )
    create_markdown_artifact(
        f"{run.n_series} series, {run.n_rows} rows. Query them with:\n\n"
        f"```\nmoe sql \"SELECT * FROM forecasts WHERE run_id = '{run.run_id}' LIMIT 20\"\n```",
        key="forecast-run",
    )


_GROUP_SQL = """
SELECT coalesce(s.freq, '(no freq)') AS freq, count(DISTINCT f.series_id) AS series,
       count(*) AS points,
       100 * avg(abs(s.values[f.origin_index + f.step] - f.point)
                 / abs(s.values[f.origin_index + f.step]))
           FILTER (WHERE s.values[f.origin_index + f.step] <> 0) AS mape,
       avg(CASE WHEN s.values[f.origin_index + f.step] BETWEEN f.q05 AND f.q95 THEN 1.0
                ELSE 0.0 END) FILTER (WHERE f.q05 IS NOT NULL AND f.q95 IS NOT NULL)
           AS coverage_90
FROM forecasts f JOIN series s USING (series_id)
WHERE f.run_id = $1 AND s.n_points >= f.origin_index + f.step
  AND s.values[f.origin_index + f.step] IS NOT NULL
GROUP BY 1 ORDER BY 1
"""


def publish_evaluation(store: Store, result: EvaluationResult) -> None:
    if not result.runs:  # an empty table would read as "no error"; say what it means
        create_markdown_artifact(
            "## Realised error\n\nNo actuals have arrived yet for any forecast run: ingest "
            "the series again once they have grown past their forecast origins, then evaluate.",
            key="realised-error-status",
        )
        return
    create_table_artifact(
        [
            {
                "run_id": r.run_id,
                "model_version": r.model_version,
                "series": r.n_series,
                "points": r.n_points,
                "mape": _clean(r.mape),
                "smape": _clean(r.smape),
                "mase": _clean(r.mase),
                "coverage_90": _clean(r.coverage_90),
            }
            for r in result.runs
        ],
        key="realised-error",
        description="Realised error of past forecast runs (oldest first)",
    )
    latest = result.runs[-1].run_id
    groups = query(store, _GROUP_SQL, [latest]).to_pylist()
    create_table_artifact(
        [{key: _clean(value) for key, value in row.items()} for row in groups],
        key="realised-error-by-frequency",
        description=f"Realised error of run {latest} per series frequency",
    )
    png = _plot_png(store, latest, show_actuals=True)
    if png is not None:
        encoded = base64.b64encode(png).decode()
        create_markdown_artifact(
            f"### Forecast vs actual, run {latest}\n\n"
            f"![forecast vs actual](data:image/png;base64,{encoded})",
            key="forecast-vs-actual",
        )
    for message in (result.alert, result.growth_alert):
        if message:
            create_markdown_artifact(f"## Alert\n\n{message}", key="forecast-error-alert")
