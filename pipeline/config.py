"""Typed, validated parameters of the jobs; the Prefect UI builds its run forms from these.

Frozen pydantic models: every field is described where it is declared; change a value by
copying (``config.model_copy(update=...)``), never in place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict, JsonValue

from moe.data import (
    DEFAULT_MIN_CONTEXT,
    SHORTEST_CONTEXT,
    default_min_context,
    shortest_context,
)
from moe.experts.registry import (
    DEFAULT_POOL,
    EXPERT_NAMES,
    FOUNDATION_EXPERTS,
    OFFLINE_EXPERTS,
)
from moe.experts.trained import GlobalExpertConfig
from moe.training import TrainConfig

__all__ = [
    "ExpertName",
    "DEFAULT_POOL",
    "OFFLINE_EXPERTS",
    "FOUNDATION_EXPERTS",
    "DaskConfig",
    "GlobalExpertConfig",
    "RetrainConfig",
    "ForecastConfig",
    "EvaluateConfig",
]

#: Registry names the forms accept: built from the registry, the one list of names (the
#: JSON schema's enum, the Prefect form's choices and pydantic's error all come from it).
if TYPE_CHECKING:
    ExpertName = str
else:
    ExpertName = Literal[EXPERT_NAMES]


_MAX_BACKTEST_WINDOWS = 100
_DEFAULT_MAX_WINDOWS = 6

#: Why 120 and not 36: the statistical experts fit on every point they are given, and on
#: official holdouts a 120-point context beat a 36-point one by 6-9% MASE (M3, Tourism, M1
#: monthly; docs/RETRAIN.md "Context length"). 36 points (three years of monthly data) is
#: still enough for a window, so short series are kept, NaN-padded on the left.
DEFAULT_INPUT_LENGTH = 120


def _windows_rule(schema: JsonDict) -> None:
    """``backtest_windows < max_windows_per_series`` as JSON Schema, for the server.

    JSON Schema cannot compare two fields, but ``backtest_windows`` is at most
    ``_MAX_BACKTEST_WINDOWS``, so one ``if``/``then`` per value of ``max_windows_per_series``
    up to it spells the rule out; a missing field stands for its default. Prefect validates
    run parameters against this schema (``enforce_parameter_schema``) before creating a run.
    """
    rules: list[JsonValue] = [
        {
            "if": {
                "properties": {"max_windows_per_series": {"const": limit}},
                "required": ["max_windows_per_series"],
            },
            "then": {"properties": {"backtest_windows": {"maximum": limit - 1}}},
        }
        for limit in range(2, _MAX_BACKTEST_WINDOWS + 1)
    ]
    rules.append(
        {
            "if": {"not": {"required": ["max_windows_per_series"]}},
            "then": {"properties": {"backtest_windows": {"maximum": _DEFAULT_MAX_WINDOWS - 1}}},
        }
    )
    schema["allOf"] = rules


class DaskConfig(BaseModel):
    """Where sharded work runs: a Dask cluster for the expert cache and the batch forecast."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str = Field(
        default="local",
        min_length=1,
        description="'local': start a Dask LocalCluster on this machine for the step (a few "
        "seconds with threads, ~10-30 s with processes) and stop it after; else a running "
        "scheduler's address, e.g. 'tcp://scheduler:8786' (its workers need this package and "
        "the store's folder).",
    )
    workers: int = Field(
        default=2, ge=1, le=256, description="LocalCluster only: worker processes (or threads)."
    )
    processes: bool = Field(
        default=True,
        description="LocalCluster only: workers as processes (true: parallel experts, each "
        "worker imports the package once) or as threads of this process (false: starts at "
        "once, parallel only where the experts release the GIL).",
    )
    shards: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Shards per step (None: two per worker thread of the cluster). Each shard "
        "is one Dask task: more shards balance uneven work, fewer save the per-shard cost.",
    )


_DASK_DESCRIPTION = (
    "Shard this job's expensive step by series over a Dask cluster (pip install "
    "moe-forecast[dask]); null (default): run it in this process."
)


class RetrainConfig(BaseModel):
    """Weekly retrain: ingest, windows, expert cache, gate training, backtest, registry."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_windows_rule)

    jsonl_paths: list[str] = Field(
        default_factory=list,
        description="JSONL/JSONL.gz files to ingest first (already-ingested files add nothing).",
    )
    experts: list[ExpertName] = Field(
        default_factory=lambda: list(DEFAULT_POOL),
        min_length=2,
        json_schema_extra={"uniqueItems": True},  # the form refuses a repeat before a run
        description="Experts the gate chooses from (top-2 per window). Foundation experts "
        "need their weights downloaded once (see README); 'global_mlp' and 'global_trees' "
        "are trained by the retrain on its training windows.",
    )
    input_length: int = Field(
        default=DEFAULT_INPUT_LENGTH,
        ge=2,
        le=4096,
        description="Most context points per window: the newest input_length points before "
        "the target (a shorter history is NaN-padded on the left, read as missing).",
    )
    min_context: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Fewest points a window needs before its target, so short series keep "
        f"their windows under a long input_length. None: the smaller of {DEFAULT_MIN_CONTEXT} "
        "and input_length, and for a series too short to keep one training window with "
        f"that, what it has (at least {SHORTEST_CONTEXT} points and two seasons), so yearly "
        "and quarterly stores train.",
    )
    pred_length: int = Field(default=18, ge=1, le=1024, description="Forecast horizon (steps).")
    season_length: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Seasonal period for the statistical experts, the MASE-unit loss and every "
        "metric. None (default): per series, from its freq (M 12, Q 4, W 52, D 7, H 24, ...) "
        "or detected from its values when it has none; a number forces it for every series.",
    )
    stride: int | None = Field(
        default=None, ge=1, description="Steps between window origins (None: pred_length)."
    )
    max_windows_per_series: int = Field(
        default=_DEFAULT_MAX_WINDOWS,
        ge=2,
        le=10_000,
        description="Newest windows per series (1 held out).",
    )
    backtest_windows: int = Field(
        default=1,
        ge=1,
        le=_MAX_BACKTEST_WINDOWS,
        description="Newest windows per series held out for backtest.",
    )
    promotion_margin: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description="Promote the challenger when its backtest MASE is at least this much "
        "lower than the champion's on the same windows (0.05 = 5%).",
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            epochs=30,
            batch_size=64,
            lr=1e-2,
            init="best_pair",
            keep_best_epoch=True,
            loss_scale="seasonal_naive",
        ),
        description="Gate training seed. The gate itself is chosen by the validated "
        "selection (moe.selection.fit_gate: best pair, linear, feature-pair candidates on "
        "each series' newest training window, one-SE rule), the same fit the accuracy "
        "benchmark reports; only 'seed' is read from here.",
    )
    global_expert: GlobalExpertConfig = Field(
        default_factory=GlobalExpertConfig,
        description="Training of the global experts 'global_mlp' and 'global_trees' (only "
        "read when one is in 'experts'): on every series' points before its backtest windows, "
        "one window per step.",
    )
    interval_calibration: Literal["per_level", "paired"] = Field(
        default="paired",
        description="Conformal calibration of the mixture's quantiles on the backtest windows: "
        "'per_level' (one factor per level and step) or 'paired' (levels q and 1-q share one "
        "factor, keeping the mixture's own asymmetry).",
    )
    interval_calibration_windows: Literal["backtest", "all"] = Field(
        default="all",
        description="Windows the conformal factors are fitted on: 'backtest' (each series' "
        "backtest windows) or 'all' (its training windows too, with expert fills cross-fitted "
        "by series fold): more origins per series, so one rough or calm window decides less "
        "(docs/ACCURACY.md accuracy12: development coverage 87.8/88.1/91.4% -> 89.5/89.1/90.9% "
        "on M3/Tourism/M1 monthly).",
    )
    device: str = Field(default="cpu", description="'cpu' or 'cuda[:n]' for experts and gate.")
    expert_batch_size: int = Field(default=256, ge=1, le=65536, description="Rows per expert call.")
    forecast_after: bool = Field(
        default=True,
        description="When the new model is promoted, refresh forecasts for every stored series.",
    )
    dask: DaskConfig | None = Field(
        default=None,
        description=_DASK_DESCRIPTION + " Shards the expert cache (distinct windows) and the "
        "forecast after a promotion.",
    )

    @field_validator("experts")
    @classmethod
    def _distinct(cls, experts: list[str]) -> list[str]:
        if len(set(experts)) != len(experts):
            raise ValueError(f"experts must be distinct, got {experts}")
        return experts

    @model_validator(mode="after")
    def _windows_fit(self) -> RetrainConfig:
        if self.backtest_windows >= self.max_windows_per_series:
            raise ValueError("backtest_windows must be smaller than max_windows_per_series")
        if self.min_context is not None and self.min_context > self.input_length:
            raise ValueError(
                f"min_context ({self.min_context}) must be at most input_length "
                f"({self.input_length})"
            )
        return self

    @property
    def window_min_context(self) -> int:
        """Fewest points before a window's target: ``min_context``, or its default (the
        most a series is asked for: shorter series get less, ``shortest_window_context``)."""
        return default_min_context(self.input_length, self.min_context)

    @property
    def shortest_window_context(self) -> int:
        """The fewest points before any window's target: ``min_context`` when set, else
        ``moe.data.SHORTEST_CONTEXT`` (what a short series gets at least; capped by L)."""
        return shortest_context(self.input_length, self.min_context)


class ForecastConfig(BaseModel):
    """Batch forecast with the champion (or a chosen version) over stored series."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    series_ids: list[str] | None = Field(
        default=None, description="Series to forecast; None = every stored series."
    )
    model_version: str | None = Field(
        default=None, description="Registry version to use; None = the champion."
    )
    chunk_size: int = Field(
        default=2048, ge=1, le=1_000_000, description="Series per chunk (bounds memory)."
    )
    run_id: str | None = Field(
        default=None,
        # Starts with a letter or digit: '_empty' (the store's placeholder) and '.', '..'
        # are names the store uses or the file system resolves, never a user's run.
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Rerunning with the same id replaces that run's rows; None = new id.",
    )
    device: str = Field(default="cpu", description="'cpu' or 'cuda[:n]'.")
    dask: DaskConfig | None = Field(default=None, description=_DASK_DESCRIPTION)


class EvaluateConfig(BaseModel):
    """Score past forecasts against actuals that have arrived since."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mape_threshold: float = Field(
        default=8.0, gt=0, description="Alert when realised MAPE (%) stays above this..."
    )
    consecutive_runs: int = Field(
        default=3, ge=1, le=100, description="...for this many consecutive forecast runs."
    )
    season_length: int | None = Field(
        default=None,
        ge=1,
        description="Seasonal period for MASE; None: per series (freq, else detected).",
    )
    growth_threshold: float = Field(
        default=0.20,
        ge=0,
        description="Alert when last week's realised MAPE exceeds the week before's by more "
        "than this fraction (0.20 = 20%).",
    )
