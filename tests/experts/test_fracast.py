"""Specifics of the fracast expert: bundled weights, quantile slots, short rows, loading errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fracast import FracastModel

from moe.experts import QUANTILE_LEVELS, ExpertConfig, ExpertLoadError, build_expert
from moe.experts.fracast_expert import MIN_OBSERVED


@pytest.fixture(scope="module")
def expert():  # type: ignore[no-untyped-def]
    """The fracast expert on its bundled weights (built once: loading is the slow part)."""
    return build_expert("fracast")


def _rows(batch: int, length: int) -> torch.Tensor:
    steps = torch.arange(length, dtype=torch.float32)
    return torch.stack(
        [30.0 + row + 0.5 * steps + 4.0 * torch.sin(steps * (0.5 + row)) for row in range(batch)]
    )


def test_matches_fracast_and_fills_only_its_levels(expert) -> None:  # type: ignore[no-untyped-def]
    """Guards the layout: 0.1..0.9 in their slots, 0.05/0.95 NaN, point = median."""
    context = _rows(2, 40)
    result = expert.forecast(context, 5)
    reference = np.sort(
        FracastModel.from_pretrained(weights="fp32").forecast_batch(context.numpy(), horizon=5),
        axis=-1,
    )
    assert result.quantiles is not None
    np.testing.assert_allclose(result.quantiles[:, :, 1:10].numpy(), reference, rtol=1e-5)
    assert torch.isnan(result.quantiles[:, :, [0, 10]]).all()
    torch.testing.assert_close(result.point, result.quantiles[:, :, QUANTILE_LEVELS.index(0.5)])
    assert expert.capabilities.quantile_levels == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def test_short_rows_get_persistence(expert) -> None:  # type: ignore[no-untyped-def]
    """Guards the documented fallback for rows with fewer than MIN_OBSERVED observations."""
    context = _rows(2, MIN_OBSERVED + 2)
    context[0, :3] = float("nan")  # MIN_OBSERVED - 1 observed
    result = expert.forecast(context, 3)
    assert torch.equal(result.point[0], context[0, -1].expand(3))
    assert torch.isnan(result.quantiles[0]).all()
    assert torch.isfinite(result.quantiles[1, :, 1:10]).all()


def test_horizon_beyond_the_native_block(expert) -> None:  # type: ignore[no-untyped-def]
    """Guards horizons above 48 (fracast's autoregressive blocks) keeping the layout."""
    result = expert.forecast(_rows(1, 30), 50)
    assert result.point.shape == (1, 50) and torch.isfinite(result.point).all()


def test_cache_key_has_version_and_weights_hash(expert) -> None:  # type: ignore[no-untyped-def]
    """Guards cache invalidation: the key names the package version and the weights' content."""
    key = expert.cache_key
    assert key.startswith("fracast|fracast==") and "bundled@" in key and "weights=fp32" in key


def test_loading_errors_say_what_to_do(tmp_path: Path) -> None:
    """Guards the load boundary: a bad checkpoint or a revision raises ExpertLoadError."""
    with pytest.raises(ExpertLoadError, match="local directory"):
        build_expert("fracast", ExpertConfig(checkpoint="someone/fracast-0"))
    with pytest.raises(ExpertLoadError, match="could not be loaded"):
        build_expert("fracast", ExpertConfig(checkpoint=str(tmp_path)))
    with pytest.raises(ExpertLoadError, match="revision"):
        build_expert("fracast", ExpertConfig(revision="main"))
