"""``moe api``: forecasts over HTTP with the champion, and the store's tables read back.

Routes (OpenAPI at ``/docs`` and ``/openapi.json``):

* ``POST /v1/forecast``: one or many series -> the mixture forecast of each (points,
  q05..q95, the two experts and their weights). Concurrent requests are batched into one
  model call (``serving.batching``).
* ``GET /v1/series/{series_id}/forecast``: the latest stored forecast of a stored series.
* ``GET /v1/models``: the registry. ``GET /v1/monitor``: realised error per evaluated
  forecast run and the alert state. ``GET /health``: liveness and the champion's version.

With a token configured every route but ``/health`` needs ``Authorization: Bearer <token>``.
Bodies above ``max_body_bytes`` get 413; invalid bodies get FastAPI's 422 with the field.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from moe.artifact import ArtifactError
from pipeline.config import EvaluateConfig
from pipeline.evaluate import mape_alert
from serving.batching import MicroBatcher
from serving.models import ModelForecasts, RouterCache, forecast_batch
from serving.schemas import (
    BatchingOut,
    ExpertWeight,
    ForecastRequest,
    ForecastResponse,
    HealthOut,
    ModelOut,
    MonitorOut,
    RunScoreOut,
    SeriesForecast,
    SeriesIn,
    StoredForecast,
)
from storage.registry import RegistryError, list_models
from storage.schemas import QUANTILE_COLUMNS
from storage.sql import query
from storage.store import Store

__all__ = ["ServiceSettings", "create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class ServiceSettings:
    """How the service runs. ``token``: None = no authentication (bind to localhost then)."""

    token: str | None = None
    device: str = "cpu"
    max_body_bytes: int = 16 * 2**20
    batch_max_rows: int = 4096
    batch_max_wait_s: float = 0.001
    champion_refresh_s: float = 5.0
    monitor: EvaluateConfig = EvaluateConfig()


class _BodyLimit:
    """ASGI middleware: 413 once a request body exceeds ``limit`` bytes (declared or sent)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int):
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._limit:
            await _too_large(self._limit)(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self._limit:
                raise _BodyTooLarge
            return message

        try:
            await self._app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self._limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body is larger than {limit} bytes"}, status_code=413)


# The quantile columns come from the declared schema (a fixed list), never from a request.
_STORED_FORECAST_SQL = (
    "SELECT run_id, model_version, origin_index, created_at, step, timestamp, point, "
    + ", ".join(QUANTILE_COLUMNS)
    + ", expert_1, weight_1, expert_2, weight_2 "
    "FROM latest_forecasts WHERE series_id = $1 ORDER BY step"
)


def _bearer(token: str | None) -> Callable[[Request], None]:
    """A dependency that checks the bearer token in constant time (no-op without one)."""

    def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                status_code=401,
                detail="missing or wrong bearer token (Authorization: Bearer <token>)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def _finite(value: Any) -> Any:
    """``None`` for NaN (JSON has no NaN), the value otherwise."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def create_app(store: Store, settings: ServiceSettings | None = None) -> FastAPI:
    """The service over ``store`` (the champion is loaded on the first forecast)."""
    settings = settings or ServiceSettings()
    cache = RouterCache(store, settings.device, settings.champion_refresh_s)

    def run(version: str | None, items: list[SeriesIn]) -> list[tuple[ModelForecasts, int]]:
        batch = forecast_batch(cache, version, items)
        return [(batch, row) for row in range(len(items))]

    batcher: MicroBatcher[SeriesIn, tuple[ModelForecasts, int]] = MicroBatcher(
        run, settings.batch_max_rows, settings.batch_max_wait_s
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(
        title="moe-forecast",
        summary="Top-2 mixture-of-experts forecasts, the model registry and monitoring.",
        version="1",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)  # type: ignore[arg-type]
    authorised = [Depends(_bearer(settings.token))]

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_: Request, error: RequestValidationError) -> JSONResponse:
        # Without echoing the input: it may be large, and NaN/Infinity in it (which Python's
        # JSON parser accepts) cannot be written back as JSON.
        detail = [
            {key: e[key] for key in ("type", "loc", "msg") if key in e} for e in error.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        try:
            current: str | None = cache.champion().model_version
        except RegistryError:
            current = None
        stats = batcher.stats
        return HealthOut(
            status="ok",
            champion=current,
            batching=BatchingOut(
                calls=stats.calls, requests=stats.jobs, largest_batch=stats.largest_batch
            ),
        )

    @app.post("/v1/forecast", response_model=ForecastResponse, dependencies=authorised)
    async def forecast(request: ForecastRequest) -> ForecastResponse:
        items = [
            s if s.series_id is not None else s.model_copy(update={"series_id": str(position)})
            for position, s in enumerate(request.series)
        ]
        try:
            results = await batcher.submit(request.model_version, items)
        except RegistryError as error:  # no champion yet (503) or an unknown version (404)
            status = 503 if request.model_version is None else 404
            raise HTTPException(status_code=status, detail=str(error)) from error
        except ArtifactError as error:  # the model file failed verification: never serve it
            raise HTTPException(status_code=503, detail=str(error)) from error
        batch = results[0][0]
        forecasts: list[SeriesForecast] = [
            result_batch.forecasts[row] for result_batch, row in results
        ]
        return ForecastResponse(
            model_version=batch.model.model_version,
            input_length=batch.model.input_length,
            pred_length=batch.model.pred_length,
            forecasts=forecasts,
        )

    @app.get(
        "/v1/series/{series_id}/forecast", response_model=StoredForecast, dependencies=authorised
    )
    def stored_forecast(series_id: str) -> StoredForecast:
        rows = query(
            store,
            _STORED_FORECAST_SQL,
            [series_id],
        ).to_pylist()
        if not rows:
            known = query(
                store, "SELECT count(*) AS n FROM series WHERE series_id = $1", [series_id]
            )
            what = "has no forecast yet" if known.column(0)[0].as_py() else "is not in the store"
            raise HTTPException(status_code=404, detail=f"series {series_id!r} {what}")
        first = rows[0]
        return StoredForecast(
            series_id=series_id,
            run_id=first["run_id"],
            model_version=first["model_version"],
            origin_index=first["origin_index"],
            created_at=first["created_at"],
            point=[_finite(r["point"]) for r in rows],
            quantiles={name: [_finite(r[name]) for r in rows] for name in QUANTILE_COLUMNS},
            timestamps=[r["timestamp"] for r in rows],
            experts=[
                ExpertWeight(name=first["expert_1"], weight=first["weight_1"]),
                ExpertWeight(name=first["expert_2"], weight=first["weight_2"]),
            ],
        )

    @app.get("/v1/models", response_model=list[ModelOut], dependencies=authorised)
    def models() -> list[ModelOut]:
        return [
            ModelOut(
                model_version=m.model_version,
                status=m.status,
                gate_kind=m.gate_kind,
                expert_keys=list(m.expert_keys),
                input_length=m.input_length,
                pred_length=m.pred_length,
                backtest_mase=m.backtest_mase,
                artifact_sha256=m.artifact_sha256,
                last_event=m.last_event,
            )
            for m in list_models(store)
        ]

    @app.get("/v1/monitor", response_model=MonitorOut, dependencies=authorised)
    def monitor() -> MonitorOut:
        rows = query(
            store,
            "SELECT e.* FROM forecast_evaluations e LEFT JOIN "
            "(SELECT run_id, min(created_at) AS created FROM forecasts GROUP BY run_id) r "
            "USING (run_id) ORDER BY r.created NULLS FIRST, e.run_id",
        ).to_pylist()
        runs = [RunScoreOut(**{key: _finite(value) for key, value in row.items()}) for row in rows]
        config = settings.monitor
        alert = mape_alert(
            [(r.run_id, r.mape if r.mape is not None else math.nan) for r in runs], config
        )
        note = None if runs else "no actuals have arrived yet for any forecast run"
        return MonitorOut(
            runs=runs,
            alert=alert,
            mape_threshold=config.mape_threshold,
            consecutive_runs=config.consecutive_runs,
            note=note,
        )

    return app
