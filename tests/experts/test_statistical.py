"""Specifics of the statsforecast experts: quantile mapping, fallbacks, NaN policy, cache keys."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import statsforecast
import statsforecast.models
import torch
from statsforecast.models import AutoETS, Naive, SeasonalNaive

from moe.experts import QUANTILE_LEVELS, ExpertConfig, build_expert
from moe.experts.statistical import _interval_keys

MEDIAN = QUANTILE_LEVELS.index(0.5)


def _seasonal_rows(batch: int, length: int, period: int = 4) -> torch.Tensor:
    """``(batch, length)`` trend + season, different per row, float32."""
    steps = torch.arange(length, dtype=torch.float64)
    rows = [
        20.0
        + row
        + (0.2 + 0.1 * row) * steps
        + 3.0 * torch.sin(2 * math.pi * steps / period + row)
        + 0.3 * torch.cos(2.3 * steps * (row + 1))
        for row in range(batch)
    ]
    return torch.stack(rows).float()


def test_interval_keys_map_each_quantile_level() -> None:
    """Guards the level -> statsforecast interval mapping (0.05 is lo-90, 0.95 is hi-90)."""
    levels, keys = _interval_keys(QUANTILE_LEVELS)
    assert levels == [20, 40, 60, 80, 90]
    assert keys == [
        "lo-90",
        "lo-80",
        "lo-60",
        "lo-40",
        "lo-20",
        "mean",
        "hi-20",
        "hi-40",
        "hi-60",
        "hi-80",
        "hi-90",
    ]


def test_autoets_matches_statsforecast_on_a_clean_seasonal_row() -> None:
    """Guards the adapter against reordering or rescaling statsforecast's own output."""
    context = _seasonal_rows(1, 24)
    expert = build_expert("autoets", ExpertConfig(season_length=4))
    result = expert.forecast(context, 5)
    reference = AutoETS(season_length=4).forecast(
        y=context[0].double().numpy(), h=5, level=[80, 90]
    )
    np.testing.assert_allclose(result.point[0].numpy(), reference["mean"], rtol=1e-6)
    assert result.quantiles is not None
    np.testing.assert_allclose(result.quantiles[0, :, 1].numpy(), reference["lo-80"], rtol=1e-6)
    np.testing.assert_allclose(result.quantiles[0, :, -1].numpy(), reference["hi-90"], rtol=1e-6)
    torch.testing.assert_close(result.quantiles[..., MEDIAN], result.point)


def test_seasonal_naive_repeats_the_last_season_with_intervals() -> None:
    """Guards season_length reaching SeasonalNaive and its statsforecast intervals being kept."""
    context = _seasonal_rows(2, 16)
    result = build_expert("seasonal_naive", ExpertConfig(season_length=4)).forecast(context, 6)
    expected = torch.cat([context[:, -4:], context[:, -4:-2]], dim=1)
    torch.testing.assert_close(result.point, expected)
    assert result.quantiles is not None and torch.isfinite(result.quantiles).all()
    reference = SeasonalNaive(season_length=4).forecast(
        y=context[1].double().numpy(), h=6, level=[90]
    )
    np.testing.assert_allclose(result.quantiles[1, :, 0].numpy(), reference["lo-90"], rtol=1e-6)


@pytest.mark.parametrize("name", ["seasonal_naive", "autoets", "autotheta"])
def test_short_rows_use_the_non_seasonal_variant(name: str) -> None:
    """Guards the documented fallback: fewer than 2 * season_length points -> season_length 1."""
    context = _seasonal_rows(2, 10)  # < 2 * 12
    seasonal = build_expert(name, ExpertConfig(season_length=12)).forecast(context, 3)
    plain = build_expert(name, ExpertConfig(season_length=1)).forecast(context, 3)
    torch.testing.assert_close(seasonal.point, plain.point)
    torch.testing.assert_close(seasonal.quantiles, plain.quantiles)


@pytest.mark.parametrize("name", ["seasonal_naive", "autoets", "autotheta"])
def test_seed_sized_context_works(name: str) -> None:
    """Guards the seed's example (input_length=4, pred_length=2) with a seasonal config."""
    context = _seasonal_rows(3, 4)
    result = build_expert(name, ExpertConfig(season_length=12)).forecast(context, 2)
    assert result.point.shape == (3, 2) and torch.isfinite(result.point).all()
    assert result.quantiles is not None and torch.isfinite(result.quantiles).all()


def test_autoets_below_its_minimum_length_is_naive() -> None:
    """Guards the tiny-series fallback: AutoETS on 4 points is Naive with Naive's intervals."""
    context = _seasonal_rows(1, 4)
    result = build_expert("autoets").forecast(context, 3)
    reference = Naive().forecast(y=context[0].double().numpy(), h=3, level=[90])
    np.testing.assert_allclose(result.point[0].numpy(), reference["mean"], rtol=1e-6)
    np.testing.assert_allclose(result.quantiles[0, :, -1].numpy(), reference["hi-90"], rtol=1e-6)


def test_missing_values_follow_the_documented_policy() -> None:
    """Guards NaN handling: leading dropped, gaps interpolated, trailing carried forward."""
    clean = _seasonal_rows(1, 20)[0]
    expert = build_expert("autotheta")
    leading = torch.cat([torch.full((3,), float("nan")), clean])[None]
    torch.testing.assert_close(
        expert.forecast(leading, 4).point, expert.forecast(clean[None], 4).point
    )

    gap = clean.clone()
    gap[8:11] = float("nan")
    filled = clean.clone()
    filled[8:11] = clean[7] + (clean[11] - clean[7]) * torch.tensor([0.25, 0.5, 0.75])
    torch.testing.assert_close(
        expert.forecast(gap[None], 4).point, expert.forecast(filled[None], 4).point
    )

    trailing = clean.clone()
    trailing[-2:] = float("nan")
    held = clean.clone()
    held[-2:] = clean[-3]
    torch.testing.assert_close(
        expert.forecast(trailing[None], 4).point, expert.forecast(held[None], 4).point
    )


def test_rows_without_enough_data_get_nan_not_errors() -> None:
    """Guards degenerate rows: all-NaN -> NaN; one observation -> that value, NaN quantiles."""
    context = _seasonal_rows(3, 6)
    context[0] = float("nan")
    context[1, :-1] = float("nan")
    result = build_expert("autoets").forecast(context, 2)
    assert torch.isnan(result.point[0]).all() and torch.isnan(result.quantiles[0]).all()
    assert torch.equal(result.point[1], context[1, -1].expand(2))
    assert torch.isnan(result.quantiles[1]).all()
    assert torch.isfinite(result.point[2]).all() and torch.isfinite(result.quantiles[2]).all()


def test_a_failing_fit_falls_back_to_naive_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Guards the per-row fallback: a fit error must not kill the batch, and must be logged."""
    expert = build_expert("autoets")

    def broken(**kwargs: object) -> dict[str, np.ndarray]:
        raise ValueError("no model able to be fitted")

    expert._seasonal.forecast = broken  # type: ignore[attr-defined]
    context = _seasonal_rows(2, 12)
    with caplog.at_level(logging.WARNING, logger="moe.experts.statistical"):
        result = expert.forecast(context, 2)
    torch.testing.assert_close(result.point, context[:, -1:].expand(2, 2))
    assert "2 of 2 rows fell back to Naive" in caplog.text and "no model able" in caplog.text


def test_cache_key_names_version_model_and_season() -> None:
    """Guards cache invalidation: the key changes with the model, the season and the library."""
    keys = {
        build_expert(name, ExpertConfig(season_length=m)).cache_key
        for name in ("seasonal_naive", "autoets", "autotheta")
        for m in (1, 12)
    }
    assert len(keys) == 6
    key = build_expert("autotheta", ExpertConfig(season_length=12)).cache_key
    assert f"statsforecast=={statsforecast.__version__}" in key
    assert "AutoTheta" in key and "season_length=12" in key


@pytest.mark.parametrize(
    ("name", "model_name"),
    [
        ("dynamic_theta", "DynamicOptimizedTheta"),
        ("autoces", "AutoCES"),
        ("autoarima", "AutoARIMA"),
    ],
)
def test_extended_pool_runs_the_named_model(name: str, model_name: str) -> None:
    """Guards the extra experts' wiring: the key names the model, the point is its mean."""
    expert = build_expert(name, ExpertConfig(season_length=4))
    assert f"|{model_name}|season_length=4|" in expert.cache_key
    context = _seasonal_rows(2, 40)
    result = expert.forecast(context, 5)
    model_class = getattr(statsforecast.models, model_name)
    for row in range(2):
        series = context[row].double().numpy()
        expected = model_class(season_length=4).forecast(y=series, h=5)["mean"]
        np.testing.assert_allclose(result.point[row].numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("context", "horizon", "message"),
    [
        (torch.ones(5), 2, "2-D tensor"),
        (torch.ones(2, 5, dtype=torch.int64), 2, "floating point"),
        (torch.ones(2, 5), 0, "positive int"),
        (torch.tensor([[1.0, float("inf")]]), 2, "inf"),
    ],
)
def test_bad_input_is_named(context: torch.Tensor, horizon: int, message: str) -> None:
    """Guards the boundary: a malformed call raises ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        build_expert("seasonal_naive").forecast(context, horizon)


def test_stat_ensemble_is_the_mean_of_its_members() -> None:
    """Guards the combination: the point is the members' mean and each quantile level the
    ensemble's point plus the mean offset of AutoETS's and AutoTheta's own quantiles (AutoCES
    gives a point only), for the ensemble's season, including the short-row (non-seasonal)
    and one-point paths."""
    config = ExpertConfig(season_length=4)
    ensemble = build_expert("stat_ensemble", config)
    context = _seasonal_rows(3, 40)
    context[1, :33] = float("nan")  # 7 observed points: shorter than 2 seasons -> plain fits
    context[2, :39] = float("nan")  # one point: Naive, no spread
    result = ensemble.forecast(context, 5)
    members = {
        name: build_expert(name, config).forecast(context, 5)
        for name in ("autoets", "autotheta", "autoces")
    }
    expected_point = torch.stack([m.point for m in members.values()]).mean(0)
    torch.testing.assert_close(result.point, expected_point)
    assert result.quantiles is not None
    offsets = [
        out.quantiles - out.point[..., None]
        for name, out in members.items()
        if name != "autoces" and out.quantiles is not None
    ]
    expected_q = expected_point[..., None] + torch.stack(offsets).mean(0)
    torch.testing.assert_close(result.quantiles, expected_q, equal_nan=True)
    median = QUANTILE_LEVELS.index(0.5)
    # (up to the members' sorting of rare crossings)
    torch.testing.assert_close(result.quantiles[:2, :, median], result.point[:2], rtol=1e-3, atol=0)
    assert torch.isnan(result.quantiles[2]).all() and torch.isfinite(result.quantiles[:2]).all()
    # Averaged sorted offsets stay sorted.
    assert (result.quantiles[:2].diff(dim=-1) >= 0).all()


def test_a_point_only_member_skips_the_intervals_and_says_so_in_its_key() -> None:
    """Guards the ensemble's fast member: the same point as with intervals, no quantiles,
    no quantile levels advertised, and a cache key of its own."""
    from moe.experts.statistical import _build

    config = ExpertConfig(season_length=4)
    full = _build("autoces", "AutoCES", config)
    point_only = _build("autoces", "AutoCES", config, intervals=False)
    context = _seasonal_rows(2, 40)
    with_intervals, without = full.forecast(context, 5), point_only.forecast(context, 5)
    torch.testing.assert_close(without.point, with_intervals.point)
    assert without.quantiles is None and point_only.capabilities.quantile_levels == ()
    assert point_only.cache_key == full.cache_key + "|point_only"
    variant = point_only.with_season_length(1)
    assert variant.forecast(context, 3).quantiles is None


def test_stat_ensemble_cache_key_and_season_variants() -> None:
    """Guards cache invalidation: the key names the library, every member and the season,
    and a season variant fits every member with the new period."""
    ensemble = build_expert("stat_ensemble", ExpertConfig(season_length=12))
    key = ensemble.cache_key
    assert key.startswith(f"stat_ensemble|statsforecast=={statsforecast.__version__}|")
    assert "mean(AutoETS,AutoTheta,AutoCES)|spread(AutoETS,AutoTheta)|season_length=12|" in key
    variant = ensemble.with_season_length(4)  # type: ignore[attr-defined]
    assert "season_length=4" in variant.cache_key and variant.cache_key != key
    assert ensemble.with_season_length(12) is ensemble  # type: ignore[attr-defined]
    context = _seasonal_rows(2, 40)
    expected = torch.stack(
        [
            build_expert(n, ExpertConfig(season_length=4)).forecast(context, 3).point
            for n in ("autoets", "autotheta", "autoces")
        ]
    ).mean(0)
    torch.testing.assert_close(variant.forecast(context, 3).point, expected)
