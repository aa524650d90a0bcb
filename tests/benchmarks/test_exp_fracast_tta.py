"""The fracast test-time-ensemble experiment asks the questions its docstring says it asks."""

from __future__ import annotations

import numpy as np

from benchmarks.exp_fracast_tta import _log_pass, _pass_input, _run
from moe.experts.fake import FakeForecaster


def _context() -> np.ndarray:
    """Two rows of L=100: a positive ramp 1..100 and one with a negative value, NaN-led."""
    positive = np.arange(1.0, 101.0)
    mixed = np.concatenate([np.full(10, np.nan), np.linspace(-5.0, 20.0, 90)])
    return np.stack([positive, mixed])


def test_trimmed_passes_mask_all_but_the_last_points() -> None:
    context = _context()
    rows, sign = _pass_input(context, "48")
    assert sign == 1.0
    assert np.isnan(rows[:, :52]).all()
    np.testing.assert_array_equal(rows[:, 52:], context[:, 52:])
    whole, _ = _pass_input(context, "all")
    np.testing.assert_array_equal(whole, context)  # NaN positions equal too


def test_flipped_pass_is_negated_back() -> None:
    # The fake forecasts offset + last value, so f(-x) negated back is last - offset: a
    # pass that forgot to undo the sign would give -(last) - 1, one that forgot to flip last + 1.
    fake = FakeForecaster("f", offset=1.0)
    rows, sign = _pass_input(_context(), "all_flip")
    assert sign == -1.0
    point = sign * _run(fake, rows, 3)
    np.testing.assert_allclose(point, [[99.0] * 3, [19.0] * 3])


def test_log_pass_maps_positive_rows_only() -> None:
    fake = FakeForecaster("f", offset=1.0)
    point = _log_pass(fake, _context(), 2)
    # positive row: exp(1 + log 100) = e * 100; the row with a negative value stays raw: 1 + 20
    np.testing.assert_allclose(point, [[np.e * 100] * 2, [21.0] * 2], rtol=1e-6)
