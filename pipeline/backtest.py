"""Score experts, the gate's mixture and two references on the same backtest windows.

References: ``equal_weight`` (the plain average of every expert) and ``best_in_hindsight``
(per window, the expert with the lowest MASE; not achievable, an upper bound for routing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from moe.experts.base import QUANTILE_LEVELS
from moe.metrics import SeasonLength, all_metrics
from storage.store import Store

__all__ = ["Scores", "score_models", "write_scores", "METRIC_NAMES"]

METRIC_NAMES = ("mase", "smape", "mape", "rmse", "wql", "coverage_90", "width_90")


@dataclass(frozen=True)
class Scores:
    """Per-window metrics of each model: ``per_window[model][metric]`` is ``(N,)``."""

    per_window: dict[str, dict[str, np.ndarray]]
    series_index: np.ndarray  # (N,)

    def overall(self) -> dict[str, dict[str, float]]:
        """Mean over windows (NaN-aware) of each metric, per model."""
        return {
            model: {
                name: float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                for name, values in metrics.items()
            }
            for model, metrics in self.per_window.items()
        }

    def table(self) -> str:
        """A fixed-width leaderboard, best MASE first."""
        overall = self.overall()
        lines = [f"{'model':<20}" + "".join(f"{name:>12}" for name in METRIC_NAMES)]
        for model in sorted(overall, key=lambda m: overall[m]["mase"]):
            lines.append(
                f"{model:<20}" + "".join(f"{overall[model][name]:>12.4f}" for name in METRIC_NAMES)
            )
        return "\n".join(lines)


def score_models(
    context: np.ndarray,
    target: np.ndarray,
    series_index: np.ndarray,
    expert_names: Sequence[str],
    points: np.ndarray,
    quantiles: np.ndarray,
    mixtures: dict[str, tuple[np.ndarray, np.ndarray | None]],
    season_length: SeasonLength,
) -> Scores:
    """Metrics on ``N`` windows.

    ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``points`` ``(N, E, H)``, ``quantiles``
    ``(N, E, H, Q)``; ``mixtures`` maps a name (e.g. ``"mixture"``) to its point ``(N, H)``
    and quantiles ``(N, H, Q)`` or None. ``season_length``: one period or ``(N,)``, one per
    window (MASE's scale).
    """
    levels = list(QUANTILE_LEVELS)
    per_window: dict[str, dict[str, np.ndarray]] = {}
    for e, name in enumerate(expert_names):
        per_window[name] = all_metrics(
            target, points[:, e], context, quantiles[:, e], levels, season_length
        )
    per_window["equal_weight"] = all_metrics(
        target, points.mean(axis=1), context, None, levels, season_length
    )
    for name, (point, mixed_quantiles) in mixtures.items():
        per_window[name] = all_metrics(
            target, point, context, mixed_quantiles, levels, season_length
        )
    expert_mase = np.stack([per_window[name]["mase"] for name in expert_names], axis=1)
    best = np.nanargmin(np.where(np.isnan(expert_mase), np.inf, expert_mase), axis=1)
    hindsight = points[np.arange(len(best)), best]
    per_window["best_in_hindsight"] = all_metrics(
        target, hindsight, context, None, levels, season_length
    )
    return Scores(per_window=per_window, series_index=series_index)


def write_scores(
    store: Store,
    scores: Scores,
    series_ids: Sequence[str],
    run_id: str,
    model_version: str | None,
) -> None:
    """Store overall and per-series rows in ``backtest_metrics`` (one part per run)."""
    rows: dict[str, list[object]] = {
        key: []
        for key in ("run_id", "model_version", "model", "series_id", "n_windows", *METRIC_NAMES)
    }

    def add(model: str, series_id: str | None, n: int, values: dict[str, float]) -> None:
        rows["run_id"].append(run_id)
        rows["model_version"].append(model_version)
        rows["model"].append(model)
        rows["series_id"].append(series_id)
        rows["n_windows"].append(n)
        for name in METRIC_NAMES:
            value = values[name]
            rows[name].append(None if not np.isfinite(value) else float(value))

    overall = scores.overall()
    n = len(scores.series_index)
    unique_series, inverse = np.unique(scores.series_index, return_inverse=True)
    windows_per_series = np.bincount(inverse, minlength=len(unique_series))
    for model, metrics in scores.per_window.items():
        add(model, None, n, overall[model])
        means = {}  # per-series NaN-aware means, vectorised with bincount
        for name in METRIC_NAMES:
            values = metrics[name]
            valid = ~np.isnan(values)
            sums = np.bincount(inverse, np.where(valid, values, 0.0), len(unique_series))
            counts = np.bincount(inverse, valid.astype(float), len(unique_series))
            with np.errstate(invalid="ignore", divide="ignore"):
                means[name] = np.where(counts > 0, sums / counts, np.nan)
        for position, series in enumerate(unique_series):
            per_series = {name: means[name][position] for name in METRIC_NAMES}
            add(model, series_ids[series], int(windows_per_series[position]), per_series)
    table = pa.table({**rows, "created_at": [datetime.now(UTC)] * len(rows["run_id"])})
    store.write_part("backtest_metrics", run_id, table)
