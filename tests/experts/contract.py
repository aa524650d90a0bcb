"""One reusable check of the ``Expert`` protocol, applied to every registered expert.

``assert_expert_contract(expert)`` forecasts a small fixed batch (trend + season, a row with
leading and interior ``NaN``, a constant row, a negative row, a large-scale row) and checks:

* protocol: name, capabilities, a stable non-empty ``cache_key``;
* layout: ``point`` ``(B, H)``, ``quantiles`` ``(B, H, Q)`` with ``Q == len(QUANTILE_LEVELS)``
  or ``None``; float32; on the context's device; no autograd graph;
* purity: the same result twice, and the caller's context is not modified;
* missing values: every row with an observation gets a finite point forecast; quantile
  levels the expert declares are finite for rows with enough observations, undeclared
  levels are ``NaN``; nothing is infinite; quantiles are non-decreasing where not ``NaN``;
* batching: a batch gives the same forecasts as its rows one by one;
* a row with no observation either raises a clear ``ValueError`` or returns the right shape.
"""

from __future__ import annotations

import math

import torch

from moe.experts.base import QUANTILE_LEVELS, Expert, ExpertCapabilities, ExpertForecast

__all__ = ["contract_context", "assert_expert_contract"]


def contract_context(input_length: int) -> torch.Tensor:
    """The fixed test batch ``(5, input_length)`` float32 described in the module docstring."""
    steps = torch.arange(input_length, dtype=torch.float64)
    season = torch.sin(2 * math.pi * steps / 4)
    wiggle = torch.cos(1.7 * steps)  # deterministic, not periodic in 4
    rows = torch.stack(
        [
            10.0 + 0.3 * steps + 2.0 * season + 0.5 * wiggle,
            50.0 + 5.0 * season + wiggle,
            torch.full_like(steps, 3.0),
            -20.0 - 0.5 * steps + 3.0 * season + wiggle,
            1.0e4 * (1.0 + 0.1 * season + 0.02 * wiggle),
        ]
    ).float()
    # Row 1 misses its first point and one in the middle (both shapes of gap).
    rows[1, 0] = float("nan")
    rows[1, input_length // 2] = float("nan")
    return rows


def _observed_counts(context: torch.Tensor) -> torch.Tensor:
    return (~torch.isnan(context)).sum(dim=1)  # (B,)


def _check_layout(
    name: str, result: ExpertForecast, batch: int, horizon: int, device: torch.device
) -> None:
    assert isinstance(result, ExpertForecast), f"{name}: forecast returned {type(result).__name__}"
    assert result.point.shape == (batch, horizon), (
        f"{name}: point shape {tuple(result.point.shape)}, expected {(batch, horizon)}"
    )
    assert result.point.dtype == torch.float32, f"{name}: point dtype {result.point.dtype}"
    assert result.point.device == device, f"{name}: point on {result.point.device}, not {device}"
    assert not result.point.requires_grad, f"{name}: point carries an autograd graph"
    if result.quantiles is not None:
        expected = (batch, horizon, len(QUANTILE_LEVELS))
        assert result.quantiles.shape == expected, (
            f"{name}: quantiles shape {tuple(result.quantiles.shape)}, expected {expected}"
        )
        assert result.quantiles.dtype == torch.float32, (
            f"{name}: quantiles {result.quantiles.dtype}"
        )
        assert result.quantiles.device == device, f"{name}: quantiles on {result.quantiles.device}"
        assert not result.quantiles.requires_grad, f"{name}: quantiles carry an autograd graph"


def _assert_same(
    name: str,
    what: str,
    actual: torch.Tensor | None,
    expected: torch.Tensor | None,
    rtol: float,
    atol: float,
) -> None:
    assert (actual is None) == (expected is None), (
        f"{name}: {what}: quantiles present in one call only"
    )
    if actual is not None and expected is not None:
        torch.testing.assert_close(
            actual,
            expected,
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            msg=lambda m: f"{name}: {what}: {m}",
        )


def assert_expert_contract(
    expert: Expert,
    input_length: int = 32,
    horizon: int = 6,
    *,
    device: str | torch.device = "cpu",
    batch_rtol: float = 1e-5,
    batch_atol: float = 1e-5,
) -> ExpertForecast:
    """Assert the ``Expert`` protocol on ``contract_context(input_length)``; return its forecast.

    ``batch_rtol``/``batch_atol`` bound the difference between a batch and its rows one by
    one (batched float32 kernels may differ in the last bits); repeats must match exactly.
    """
    assert isinstance(expert, Expert), f"{type(expert).__name__} does not implement Expert"
    name = expert.name
    assert isinstance(name, str) and name, f"expert name must be a non-empty str, got {name!r}"
    caps = expert.capabilities
    assert isinstance(caps, ExpertCapabilities), f"{name}: capabilities is {type(caps).__name__}"
    assert set(caps.quantile_levels) <= set(QUANTILE_LEVELS), (
        f"{name}: declared levels {caps.quantile_levels} not in QUANTILE_LEVELS"
    )
    key = expert.cache_key
    assert isinstance(key, str) and key and key == expert.cache_key, f"{name}: unstable cache_key"

    device = torch.device(device)
    context = contract_context(input_length).to(device)
    before = context.clone()
    batch = context.shape[0]

    first = expert.forecast(context, horizon)
    second = expert.forecast(context, horizon)
    _check_layout(name, first, batch, horizon, device)
    _check_layout(name, second, batch, horizon, device)
    torch.testing.assert_close(
        context, before, rtol=0, atol=0, equal_nan=True, msg=f"{name} modified the caller's context"
    )
    _assert_same(name, "same input twice", second.point, first.point, 0.0, 0.0)
    _assert_same(name, "same input twice", second.quantiles, first.quantiles, 0.0, 0.0)

    point = first.point.cpu()
    assert torch.isfinite(point).all(), f"{name}: non-finite point forecasts:\n{point}"
    if first.quantiles is not None:
        quantiles = first.quantiles.cpu()  # (B, H, Q)
        assert not torch.isinf(quantiles).any(), f"{name}: infinite quantiles"
        declared = torch.tensor([q in caps.quantile_levels for q in QUANTILE_LEVELS])
        assert torch.isnan(quantiles[:, :, ~declared]).all(), (
            f"{name}: levels outside capabilities.quantile_levels must be NaN"
        )
        enough = _observed_counts(context.cpu()) >= max(caps.min_context, 2)
        assert torch.isfinite(quantiles[enough][:, :, declared]).all(), (
            f"{name}: declared quantile levels are not finite for rows with enough observations"
        )
        steps = quantiles[:, :, 1:] - quantiles[:, :, :-1]
        tolerance = 1e-5 * (1.0 + quantiles[:, :, 1:].abs())
        crossing = (steps < -tolerance) & ~torch.isnan(steps)
        assert not crossing.any(), (
            f"{name}: quantiles decrease across levels at {crossing.nonzero()[:5].tolist()}"
        )

    for row in range(batch):
        alone = expert.forecast(context[row : row + 1], horizon)
        _check_layout(name, alone, 1, horizon, device)
        what = f"row {row} alone vs in a batch"
        _assert_same(name, what, alone.point, first.point[row : row + 1], batch_rtol, batch_atol)
        batched_q = None if first.quantiles is None else first.quantiles[row : row + 1]
        _assert_same(name, what, alone.quantiles, batched_q, batch_rtol, batch_atol)

    missing = torch.full((1, input_length), float("nan"), device=device)
    try:
        empty = expert.forecast(missing, horizon)
    except ValueError as error:  # a clear refusal is allowed; any other error is a bug
        assert "nan" in str(error).lower() or "observ" in str(error).lower(), (
            f"{name}: unclear error for an all-NaN row: {error}"
        )
    else:
        _check_layout(name, empty, 1, horizon, device)
        assert not torch.isinf(empty.point).any(), f"{name}: infinite forecast for an all-NaN row"
    return first
