"""The accuracy benchmark's global MLP expert: trained on training parts only, cross-fitted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import bench_accuracy
from benchmarks._accuracy_data import BenchSeries, make_windows
from benchmarks.bench_accuracy import Prepared, add_global_mlp
from moe.experts.fake import FakeForecaster
from moe.experts.global_mlp import GlobalMLPConfig

_SMALL = GlobalMLPConfig(width=32, depth=2, epochs=5, min_steps=20)  # seconds, not minutes


def _prepared(test_offset: float) -> Prepared:
    """Eight seasonal series (length 60, h=6); ``test_offset`` shifts only the holdouts."""
    rng = np.random.default_rng(0)
    steps = np.arange(66)
    full = [
        10 + s + 3 * np.sin(2 * np.pi * steps / 12 + s) + rng.normal(0, 0.3, 66) for s in range(8)
    ]
    data = BenchSeries(
        name="toy",
        ids=[f"s{i}" for i in range(8)],
        train=[row[:60] for row in full],
        test=np.stack([row[60:] + test_offset for row in full]),
        horizon=6,
        period=12,
        total=8,
    )
    windows = make_windows(data, 24, 2, None, 12)
    n = len(windows.is_test)
    return Prepared(
        name="toy",
        data=data,
        windows=windows,
        experts=[FakeForecaster("fake")],
        points=torch.zeros(n, 1, 6),
        quantiles=torch.zeros(n, 1, 6, 3),
        started=0.0,
    )


def test_global_mlp_never_sees_holdout_targets() -> None:
    """Guards leakage: changing every holdout target leaves every MLP forecast unchanged."""
    a, b = _prepared(0.0), _prepared(1000.0)
    assert not np.allclose(a.windows.target[a.windows.is_test], b.windows.target[b.windows.is_test])
    add_global_mlp([a], seed=0, stride=2, min_context=12, config=_SMALL)
    add_global_mlp([b], seed=0, stride=2, min_context=12, config=_SMALL)
    assert a.points.shape == (len(a.windows.is_test), 2, 6)
    assert [e.name for e in a.experts] == ["fake", "global_mlp"]
    torch.testing.assert_close(a.points, b.points)
    assert torch.isfinite(a.points[:, 1]).all()
    assert torch.isnan(a.quantiles[:, 1]).all()  # point-only expert


def test_training_windows_are_cross_fitted() -> None:
    """Guards the gate's view: a training window's forecast must not come from the network
    that also trained on that series (else the gate over-trusts an in-sample fit)."""
    a = _prepared(0.0)
    changed = dataclasses.replace(
        a, data=dataclasses.replace(a.data, train=[row.copy() for row in a.data.train])
    )
    add_global_mlp([a], seed=0, stride=2, min_context=12, config=_SMALL)
    # Perturb series 0's training part only (its windows' contexts stay as they are): the
    # forecasts of series 0's training windows must not move, since their network never
    # trained on series 0; the test-window network trains on everything, so it may move.
    changed.data.train[0][:] += np.linspace(0.0, 80.0, 60) ** 1.5  # not shift-invariant
    add_global_mlp([changed], seed=0, stride=2, min_context=12, config=_SMALL)
    own = torch.from_numpy((a.windows.series_index == 0) & ~a.windows.is_test)
    assert own.any()
    torch.testing.assert_close(a.points[own, 1], changed.points[own, 1])
    test_rows = torch.from_numpy(a.windows.is_test)
    assert not torch.allclose(a.points[test_rows, 1], changed.points[test_rows, 1])


def test_a_rerun_reuses_the_networks_and_other_data_trains_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the benchmark's MLP cache: same windows and config reuse the saved forecasts
    and network (no training); other training data never hits the old entry."""
    first, again, other = _prepared(0.0), _prepared(0.0), _prepared(0.0)
    add_global_mlp([first], seed=0, stride=2, min_context=12, config=_SMALL, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 1 and len(list(tmp_path.glob("*.pt"))) == 1

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although the cache holds these windows")

    monkeypatch.setattr(bench_accuracy, "train_global_mlp", no_training)
    add_global_mlp([again], seed=0, stride=2, min_context=12, config=_SMALL, cache_dir=tmp_path)
    torch.testing.assert_close(first.points, again.points)
    assert again.experts[-1].cache_key == first.experts[-1].cache_key
    other.data.train[3][:] += 5.0  # one series' training part: another digest, so it trains
    with pytest.raises(AssertionError, match="trained although"):
        add_global_mlp([other], seed=0, stride=2, min_context=12, config=_SMALL, cache_dir=tmp_path)
