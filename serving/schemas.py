"""Request and response bodies of the HTTP service (they make its OpenAPI schema).

Limits are part of the contract: a request carries at most ``MAX_SERIES_PER_REQUEST``
series of at most ``MAX_POINTS_PER_SERIES`` points each, so one request cannot hold the
service's memory or its one model worker for long.
"""

from __future__ import annotations

import math
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "MAX_SERIES_PER_REQUEST",
    "MAX_POINTS_PER_SERIES",
    "SeriesIn",
    "ForecastRequest",
    "ExpertWeight",
    "SeriesForecast",
    "ForecastResponse",
    "StoredForecast",
    "ModelOut",
    "RunScoreOut",
    "MonitorOut",
    "BatchingOut",
    "HealthOut",
]

MAX_SERIES_PER_REQUEST = 1024
MAX_POINTS_PER_SERIES = 100_000


class SeriesIn(BaseModel):
    """One series to forecast: values oldest first, ``null`` = missing."""

    model_config = ConfigDict(extra="forbid")

    series_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Echoed in the response; defaults to the series' position ('0', '1', ...).",
    )
    values: list[float | None] = Field(
        min_length=1,
        max_length=MAX_POINTS_PER_SERIES,
        description="Observations, oldest first; null marks a missing value.",
    )
    start: datetime | None = Field(
        default=None, description="Timestamp of the first value (with freq: step timestamps)."
    )
    freq: str | None = Field(
        default=None,
        max_length=16,
        description="Pandas frequency alias, e.g. 'MS', 'D', 'h' (with start: step timestamps).",
    )

    @field_validator("values")
    @classmethod
    def _finite_and_observed(cls, values: list[float | None]) -> list[float | None]:
        bad = [i for i, v in enumerate(values) if v is not None and not math.isfinite(v)]
        if bad:
            raise ValueError(f"values must be finite numbers or null; not at positions {bad[:5]}")
        if all(v is None for v in values):
            raise ValueError("values has no observed value (all null)")
        return values

    @field_validator("freq")
    @classmethod
    def _known_frequency(cls, freq: str | None) -> str | None:
        if freq is None:
            return None
        from pandas.tseries.frequencies import to_offset

        try:
            to_offset(freq)
        except ValueError as error:
            raise ValueError(f"unknown frequency {freq!r}: {error}") from None
        return freq


class ForecastRequest(BaseModel):
    """``POST /v1/forecast``: one or many series."""

    model_config = ConfigDict(extra="forbid")

    series: list[SeriesIn] = Field(min_length=1, max_length=MAX_SERIES_PER_REQUEST)
    model_version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.:-]{1,64}$",
        description="Registry version to use; null = the champion.",
    )

    @model_validator(mode="after")
    def _distinct_ids(self) -> ForecastRequest:
        ids = [s.series_id for s in self.series if s.series_id is not None]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"series_id must be distinct within a request: {duplicated[:5]}")
        return self


class ExpertWeight(BaseModel):
    name: str
    weight: float


class SeriesForecast(BaseModel):
    """One series' mixture forecast: ``pred_length`` steps, quantiles as columns."""

    series_id: str
    point: list[float | None]
    quantiles: dict[str, list[float | None]] = Field(
        description="q05 ... q95, one list per level, each pred_length long (null: no level)."
    )
    timestamps: list[datetime] | None = Field(
        description="Step timestamps when the request gave start and freq."
    )
    experts: list[ExpertWeight] = Field(description="The two experts mixed, with their weights.")


class ForecastResponse(BaseModel):
    model_version: str
    input_length: int
    pred_length: int
    forecasts: list[SeriesForecast]


class StoredForecast(BaseModel):
    """``GET /v1/series/{id}/forecast``: the latest stored forecast of a stored series."""

    series_id: str
    run_id: str
    model_version: str
    origin_index: int
    created_at: datetime
    point: list[float | None]
    quantiles: dict[str, list[float | None]]
    timestamps: list[datetime | None]
    experts: list[ExpertWeight]


class ModelOut(BaseModel):
    model_version: str
    status: str
    gate_kind: str
    expert_keys: list[str]
    input_length: int
    pred_length: int
    backtest_mase: float | None
    artifact_sha256: str
    last_event: str | None


class RunScoreOut(BaseModel):
    run_id: str
    model_version: str
    evaluated_at: datetime
    n_series: int
    n_points: int
    mape: float | None
    smape: float | None
    mase: float | None
    coverage_90: float | None


class MonitorOut(BaseModel):
    """``GET /v1/monitor``: realised error per evaluated forecast run and the alert state."""

    runs: list[RunScoreOut] = Field(description="Oldest first.")
    alert: str | None = Field(description="Set while the alert condition holds.")
    mape_threshold: float
    consecutive_runs: int
    note: str | None = Field(description="Says so when no actuals have arrived yet.")


class BatchingOut(BaseModel):
    """Since the service started: model calls made, forecast requests they served."""

    calls: int
    requests: int
    largest_batch: int = Field(description="Most series in one model call.")


class HealthOut(BaseModel):
    status: str
    champion: str | None
    batching: BatchingOut
