"""Season length from frequency aliases and from the data."""

from __future__ import annotations

import numpy as np
import pytest

from moe.seasonality import detect_season, season_from_freq, season_length_of


@pytest.mark.parametrize(
    ("freq", "period"),
    [
        ("M", 12), ("MS", 12), ("ME", 12), ("BMS", 12), ("Q", 4), ("QS-DEC", 4), ("QE", 4),
        ("A", 1), ("Y", 1), ("YS", 1), ("A-DEC", 1), ("W", 52), ("W-SUN", 52), ("D", 7),
        ("B", 5), ("H", 24), ("h", 24), ("2H", 12), ("3M", 4), ("6MS", 2), ("5D", 1),
        ("T", 60), ("min", 60), ("5min", 12), ("15min", 96), ("30min", 48), ("S", 60),
        ("SMS", 24), ("ms", 1),
    ],
)  # fmt: skip
def test_freq_aliases_map_to_periods(freq: str, period: int) -> None:
    """Guards the one alias -> period table (e.g. MS must stay monthly, ms sub-second)."""
    assert season_from_freq(freq) == period


@pytest.mark.parametrize("freq", [None, "", "fortnightly", "12", "M-"])
def test_unknown_freq_gives_none(freq: str | None) -> None:
    """Guards that an unknown alias is reported as unknown (so it is detected), not guessed."""
    assert season_from_freq(freq) is None


def _seasonal(period: int, n: int, seed: int = 0, trend: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    # A smooth annual-style shape plus irregular detail, as in real seasonal profiles.
    pattern = np.sin(2 * np.pi * np.arange(period) / period) + 0.5 * rng.normal(size=period)
    return 10 + trend * t + 2 * pattern[t % period] + 0.3 * rng.standard_normal(n)


@pytest.mark.parametrize(("period", "n"), [(4, 40), (7, 70), (12, 96), (24, 120), (52, 200)])
def test_detects_the_period_of_seasonal_series(period: int, n: int) -> None:
    """Guards the detector on clear seasonal patterns with a trend (five seeds each)."""
    found = [detect_season(_seasonal(period, n, seed)) for seed in range(5)]
    assert found == [period] * 5


def test_noise_and_random_walks_are_not_seasonal() -> None:
    """Guards against false seasons on white noise and random walks (at most 1 in 20)."""
    rng = np.random.default_rng(1)
    found = [detect_season(rng.standard_normal(120)) for _ in range(10)]
    found += [detect_season(rng.standard_normal(120).cumsum()) for _ in range(10)]
    assert sum(period != 1 for period in found) <= 1


def test_short_constant_and_missing_series() -> None:
    """Guards the edge cases: too short, constant, all-NaN and gappy series."""
    assert detect_season([1.0, 2.0, 3.0]) == 1
    assert detect_season(np.ones(100)) == 1
    assert detect_season(np.full(50, np.nan)) == 1
    gappy = _seasonal(12, 96)
    gappy[[5, 30, 31, 60]] = np.nan
    assert detect_season(gappy) == 12


def test_quarterly_is_not_reported_as_a_multiple() -> None:
    """Guards the divisor rule: a period-4 series must not come out as 12 (also a peak)."""
    assert [detect_season(_seasonal(4, 60, seed)) for seed in range(5)] == [4] * 5


def test_season_length_of_prefers_forced_then_freq_then_data() -> None:
    """Guards the precedence: forced > frequency alias > detection."""
    values = _seasonal(7, 70)
    assert season_length_of("MS", values, forced=3) == 3
    assert season_length_of("MS", values) == 12
    assert season_length_of(None, values) == 7
    assert season_length_of("bogus", values) == 7
    with pytest.raises(ValueError, match="forced season"):
        season_length_of(None, values, forced=0)
