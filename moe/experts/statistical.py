"""Statistical experts from ``statsforecast``: SeasonalNaive, AutoETS, AutoTheta.

They need no weights, so the pipeline forecasts for real anywhere. Each row of a batch is an
independent series: the model is fitted on that row and forecast ``horizon`` steps with the
model's ``forecast`` method (fit and predict in one call). A plain loop over rows was
measured as fast as ``StatsForecast(n_jobs=1).forecast`` on a long-format frame (the fitting
dominates; the frame only adds pandas overhead) and keeps the per-row fallbacks below simple.

Per-row policy (part of ``cache_key`` through :data:`POLICY_VERSION`):

* missing values: statsforecast models reject ``NaN``. Leading ``NaN`` are dropped (the series
  starts at its first observation), interior gaps are filled by linear interpolation, and
  trailing ``NaN`` carry the last observation forward (so the forecast origin stays at the
  end of the window). A row without any observation gets ``NaN`` everywhere.
* short rows: with fewer than ``2 * season_length`` points the non-seasonal variant
  (``season_length=1``) is used. Below a model's minimum length (AutoETS: 7 points,
  AutoTheta: 4; statsforecast raises "tiny datasets" under that) the row gets the Naive
  method, i.e. ETS(A,N,N) with alpha = 1, with its normal intervals. So with the seed's
  ``input_length=4`` AutoETS is Naive on every row.
* a fit that raises or returns non-finite values also falls back to Naive for that row; one
  warning per call names how many rows and the first error.

Quantiles: ``QUANTILE_LEVELS`` are read from the models' prediction intervals, level
``q < 0.5`` from ``lo-{100(1 - 2q)}``, ``q > 0.5`` from ``hi-{100(2q - 1)}``, and ``0.5`` is the
point forecast (the mean; the intervals are symmetric normal intervals, so it is also their
median). SeasonalNaive's intervals come from statsforecast too (normal, from the seasonal
residuals, widening with each season). Rare quantile crossings are repaired by sorting.
A row fitted on a single point has no spread estimate: its quantiles are ``NaN``.

Compute runs in float64 numpy on the CPU; outputs are float32 on the context's device.
``ExpertConfig.device``/``dtype``/``batch_size`` do not apply and are ignored.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from moe.experts._loading import check_inputs, import_extra
from moe.experts.base import QUANTILE_LEVELS, ExpertCapabilities, ExpertConfig, ExpertForecast
from moe.gaps import fill_row

__all__ = [
    "POLICY_VERSION",
    "StatisticalForecaster",
    "build_seasonal_naive",
    "build_autoets",
    "build_autotheta",
    "build_dynamic_theta",
    "build_autoces",
    "build_autoarima",
    "StatisticalEnsemble",
    "ENSEMBLE_MEMBERS",
    "ENSEMBLE_SPREAD_MEMBERS",
    "build_stat_ensemble",
]

_log = logging.getLogger(__name__)

#: Bumped whenever the per-row policy above changes, so cached forecasts are recomputed.
POLICY_VERSION = 1

#: Shortest series each model is fitted on; shorter rows get the Naive method.
_MIN_LENGTH = {
    "SeasonalNaive": 1,
    "AutoETS": 7,
    "AutoTheta": 4,
    # The extended pool; below these statsforecast raises or returns a degenerate fit.
    "DynamicOptimizedTheta": 4,
    "AutoCES": 7,
    "AutoARIMA": 7,
}

#: Errors statsforecast raises for data a model cannot fit; any other error propagates.
_FIT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    NotImplementedError,
    ArithmeticError,
    np.linalg.LinAlgError,
)


def _interval_keys(levels: tuple[float, ...]) -> tuple[list[int | float], list[str]]:
    """Interval levels (0-100) to request and, per quantile level, the result key to read."""
    keys: list[str] = []
    wanted: set[int | float] = set()
    for q in levels:
        if q == 0.5:
            keys.append("mean")
            continue
        coverage = round(100.0 * abs(1.0 - 2.0 * q), 6)
        level: int | float = int(coverage) if coverage.is_integer() else coverage
        wanted.add(level)
        keys.append(f"{'lo' if q < 0.5 else 'hi'}-{level}")
    return sorted(wanted), keys


class StatisticalForecaster:
    """One statsforecast model behind the ``Expert`` protocol, fitted per row."""

    def __init__(
        self,
        name: str,
        model_name: str,
        factory: Callable[[int], Any],
        *,
        season_length: int,
        version: str,
        intervals: bool = True,
    ) -> None:
        """Wrap a statsforecast model (``build_*`` is the normal way in).

        Args:
            name: registry name, e.g. ``"autoets"``.
            model_name: statsforecast class name; selects the minimum length, part of the key.
            factory: ``season_length -> model`` (a statsforecast model instance).
            season_length: seasonal period (1 = none); shorter rows use 1 (module docstring).
            version: statsforecast version, part of ``cache_key``.
            intervals: False: point forecasts only (``quantiles`` None), for a member whose
                intervals cost far more than its fit (AutoCES simulates them:
                ``StatisticalEnsemble``).
        """
        if season_length < 1:
            raise ValueError(f"{name} season_length must be >= 1, got {season_length}")
        from statsforecast.models import Naive

        self.name = name
        self._model_name = model_name
        self._season_length = season_length
        self._version = version
        self._factory = factory
        self._intervals = intervals
        self._variants: dict[int, StatisticalForecaster] = {season_length: self}
        self._min_length = _MIN_LENGTH[model_name]
        self._seasonal = factory(season_length)
        self._plain = factory(1) if season_length > 1 else self._seasonal
        self._naive = Naive()
        levels, self._keys = _interval_keys(QUANTILE_LEVELS if intervals else (0.5,))
        self._levels: list[int | float] | None = levels if intervals else None
        self.capabilities = ExpertCapabilities(
            max_context=None,
            min_context=1,
            native_horizon=None,
            quantile_levels=QUANTILE_LEVELS if intervals else (),
            handles_missing=False,
        )

    @property
    def cache_key(self) -> str:
        """``<name>|statsforecast==<version>|<Model>|season_length=<m>|policy=<n>``
        (``|point_only`` appended without intervals)."""
        return (
            f"{self.name}|statsforecast=={self._version}|{self._model_name}"
            f"|season_length={self._season_length}|policy={POLICY_VERSION}"
            + ("" if self._intervals else "|point_only")
        )

    @property
    def season_length(self) -> int:
        """The seasonal period this instance fits with (1 = none)."""
        return self._season_length

    def with_season_length(self, season_length: int) -> StatisticalForecaster:
        """The same model for period ``season_length`` (built once, then reused)."""
        season_length = int(season_length)
        if season_length not in self._variants:
            variant = StatisticalForecaster(
                self.name,
                self._model_name,
                self._factory,
                season_length=season_length,
                version=self._version,
                intervals=self._intervals,
            )
            variant._variants = self._variants  # one family shares its variants
            self._variants[season_length] = variant
        return self._variants[season_length]

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """``context`` ``(B, L)`` -> ``point`` ``(B, H)``, ``quantiles`` ``(B, H, Q)``."""
        check_inputs(context, horizon, self.name)
        # A float64 copy on the CPU: the caller's tensor is never written to.
        rows = np.array(context.detach().to("cpu", torch.float64).numpy(), copy=True)  # (B, L)
        batch = rows.shape[0]
        levels = len(self._keys)  # Q, or 1 (the point) without intervals
        quantiles = np.full((batch, horizon, levels), np.nan)  # (B, H, Q)
        no_spread = np.zeros(batch, bool)  # rows fitted on one point: point only
        failures: list[tuple[int, str]] = []
        with warnings.catch_warnings():
            # AutoTheta says so on every short row; the spread it then uses is documented.
            warnings.filterwarnings("ignore", "Too few residuals", UserWarning)
            for index in range(batch):
                if np.isnan(rows[index]).all():
                    continue
                series = fill_row(rows[index])
                quantiles[index] = self._forecast_row(series, horizon, index, failures)
                no_spread[index] = series.shape[0] < 2
        if failures:
            first_row, first_error = failures[0]
            _log.warning(
                "%s: %d of %d rows fell back to Naive after a failed fit (first: row %d, %s)",
                self.name,
                len(failures),
                batch,
                first_row,
                first_error,
            )
        point = quantiles[:, :, self._keys.index("mean")].copy()  # (B, H)
        if not self._intervals:
            return ExpertForecast(
                point=torch.from_numpy(point.astype(np.float32)).to(context.device),
                quantiles=None,
            )
        quantiles[no_spread] = np.nan
        # Sort to repair rare crossings; all-NaN rows stay NaN (NaN sorts last).
        quantiles = np.sort(quantiles, axis=-1)
        return ExpertForecast(
            point=torch.from_numpy(point.astype(np.float32)).to(context.device),
            quantiles=torch.from_numpy(quantiles.astype(np.float32)).to(context.device),
        )

    def _forecast_row(
        self, series: np.ndarray, horizon: int, index: int, failures: list[tuple[int, str]]
    ) -> np.ndarray:
        """``(n,)`` without NaN -> ``(H, Q)``: point at level 0.5, intervals elsewhere."""
        length = series.shape[0]
        if length < self._min_length:
            model = self._naive
        elif length < 2 * self._season_length:
            model = self._plain
        else:
            model = self._seasonal
        return self._run(model, series, horizon, index, failures)

    def _run(
        self,
        model: Any,
        series: np.ndarray,
        horizon: int,
        index: int,
        failures: list[tuple[int, str]],
    ) -> np.ndarray:
        """One statsforecast call -> ``(H, Q)``; Naive when the fit fails or is non-finite."""
        try:
            # Degenerate fits (e.g. constant series) divide by zero inside statsforecast;
            # the result is checked for finiteness below instead.
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                result = model.forecast(y=series, h=horizon, level=self._levels)
            table = np.stack([np.asarray(result[key], np.float64) for key in self._keys], axis=-1)
            if np.isfinite(table).all():
                return table
            reason = "non-finite forecast"
        except _FIT_ERRORS as error:
            reason = f"{type(error).__name__}: {error}"
        if model is self._naive:
            raise RuntimeError(f"{self.name}: Naive failed on row {index}: {reason}")
        failures.append((index, reason))
        return self._run(self._naive, series, horizon, index, failures)


def _build(
    name: str, model_name: str, config: ExpertConfig, intervals: bool = True
) -> StatisticalForecaster:
    """Import statsforecast (the ``stats`` extra) and wrap ``model_name``."""
    statsforecast = import_extra(
        "statsforecast", expert=name, extra="stats", package="statsforecast"
    )
    models = import_extra(
        "statsforecast.models", expert=name, extra="stats", package="statsforecast"
    )
    model_class = getattr(models, model_name)
    return StatisticalForecaster(
        name,
        model_name,
        lambda season_length: model_class(season_length=season_length),
        season_length=config.season_length,
        version=statsforecast.__version__,
        intervals=intervals,
    )


def build_seasonal_naive(config: ExpertConfig) -> StatisticalForecaster:
    """SeasonalNaive with ``config.season_length`` (Naive when it is 1 or the row is short)."""
    return _build("seasonal_naive", "SeasonalNaive", config)


def build_autoets(config: ExpertConfig) -> StatisticalForecaster:
    """AutoETS (model ``ZZZ``, AICc selection) with ``config.season_length``."""
    return _build("autoets", "AutoETS", config)


def build_autotheta(config: ExpertConfig) -> StatisticalForecaster:
    """AutoTheta (STM/OTM/DSTM/DOTM by MSE) with ``config.season_length``."""
    return _build("autotheta", "AutoTheta", config)


def build_dynamic_theta(config: ExpertConfig) -> StatisticalForecaster:
    """DynamicOptimizedTheta (DOTM: theta and the drift optimised, dynamic) per row."""
    return _build("dynamic_theta", "DynamicOptimizedTheta", config)


def build_autoces(config: ExpertConfig) -> StatisticalForecaster:
    """AutoCES (complex exponential smoothing, N/S/P/F chosen by AICc) per row."""
    return _build("autoces", "AutoCES", config)


def build_autoarima(config: ExpertConfig) -> StatisticalForecaster:
    """AutoARIMA (stepwise Hyndman-Khandakar search). About 10x AutoETS's fit time per row:
    roughly 0.5 s per 126-point monthly series on one core here."""
    return _build("autoarima", "AutoARIMA", config)


#: The ensemble's members (statsforecast class names), chosen on the development split of
#: M3, Tourism and M1 monthly (docs/ACCURACY.md "accuracy10"): the mean of these three beat
#: the mean with DynamicOptimizedTheta added and every member alone on average.
ENSEMBLE_MEMBERS: tuple[str, ...] = ("AutoETS", "AutoTheta", "AutoCES")

#: The members whose intervals give the ensemble's spread. Not AutoCES: statsforecast
#: simulates its intervals (5000 paths in a Python loop), 1.5-2.3 s per yearly row against
#: 0.6 ms for its point forecast, and ~80 of its ~95 ms per monthly row.
ENSEMBLE_SPREAD_MEMBERS: tuple[str, ...] = ("AutoETS", "AutoTheta")


class StatisticalEnsemble:
    """The equal-weight mean of several statsforecast models, as one expert.

    Why: the classic combination benchmarks (M4's Comb and SCUM) beat each member; here the
    mean of AutoETS, AutoTheta and AutoCES is 1-5% below the better of AutoETS/AutoTheta on
    M3, Tourism and M1 monthly. The top-2 gate then routes between this combination and the
    other experts, so a pair can hold four models while only two experts run per series.

    Each member is a :class:`StatisticalForecaster` (same per-row policy, fallbacks and
    season handling). Point: the mean of the members' points. Quantiles: the ensemble's
    point plus the mean, level by level, of each spread member's quantiles minus its own
    point (members built with ``intervals=False`` give a point only; averaging sorted
    offsets keeps them sorted); a row where a spread member has no quantile (fitted on one
    point) has none.
    """

    def __init__(self, name: str, members: list[StatisticalForecaster]) -> None:
        if len(members) < 2:
            raise ValueError(f"{name} needs at least two members, got {len(members)}")
        seasons = {member.season_length for member in members}
        if len(seasons) != 1:
            raise ValueError(f"{name} members disagree on season_length: {sorted(seasons)}")
        self.name = name
        self._members = members
        spread = [m.capabilities for m in members if m.capabilities.quantile_levels]
        self.capabilities = (spread or [members[0].capabilities])[0]

    @property
    def cache_key(self) -> str:
        """``<name>|statsforecast==<v>|mean(<Model>,...)|spread(<Model>,...)|season_length=<m>
        |policy=<n>``."""
        first = self._members[0]
        models = ",".join(member._model_name for member in self._members)
        spread = ",".join(m._model_name for m in self._members if m.capabilities.quantile_levels)
        return (
            f"{self.name}|statsforecast=={first._version}|mean({models})|spread({spread})"
            f"|season_length={self.season_length}|policy={POLICY_VERSION}"
        )

    @property
    def season_length(self) -> int:
        """The seasonal period every member fits with (1 = none)."""
        return self._members[0].season_length

    def with_season_length(self, season_length: int) -> StatisticalEnsemble:
        """The same ensemble with every member configured for period ``season_length``."""
        if int(season_length) == self.season_length:
            return self
        return StatisticalEnsemble(
            self.name, [member.with_season_length(season_length) for member in self._members]
        )

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """``context`` ``(B, L)`` -> ``point`` ``(B, H)``, ``quantiles`` ``(B, H, Q)``."""
        check_inputs(context, horizon, self.name)
        outputs = [member.forecast(context, horizon) for member in self._members]
        point = torch.stack([out.point for out in outputs]).mean(dim=0)  # (B, H)
        offsets = [
            out.quantiles - out.point[..., None]  # (B, H, Q), 0 at level 0.5
            for out in outputs
            if out.quantiles is not None
        ]
        if not offsets:
            return ExpertForecast(point=point, quantiles=None)
        # NaN in any spread member (one-point rows) stays NaN.
        quantiles = point[..., None] + torch.stack(offsets).mean(dim=0)
        return ExpertForecast(point=point, quantiles=quantiles)


def build_stat_ensemble(config: ExpertConfig) -> StatisticalEnsemble:
    """The mean of AutoETS, AutoTheta and AutoCES (:data:`ENSEMBLE_MEMBERS`), fitted per row
    with ``config.season_length``; the spread from AutoETS and AutoTheta
    (:data:`ENSEMBLE_SPREAD_MEMBERS`). Costs the sum of its members' fits: about 48 ms per
    120-point M3 monthly row on one core here (94 ms when AutoCES also simulated its
    intervals), 4 ms per yearly row (32 ms)."""
    name = "stat_ensemble"
    members = [
        _build(name, model_name, config, intervals=model_name in ENSEMBLE_SPREAD_MEMBERS)
        for model_name in ENSEMBLE_MEMBERS
    ]
    return StatisticalEnsemble(name, members)
