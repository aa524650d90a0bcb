"""The expert-forecast cache: compute once, resume after a crash, read back aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moe.experts.base import ExpertForecast
from moe.experts.fake import FakeForecaster, fake_trio
from pipeline.precompute import load_cached, precompute_cache
from storage import Store


def _context(n: int, length: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(10, 3, (n, length)).astype(np.float32)


def test_rerun_does_no_expert_work(store: Store) -> None:
    """A second precompute on the same windows calls no expert."""
    experts = fake_trio()
    context = _context(50)
    precompute_cache(store, experts, context, 3, batch_size=16, progress=False)
    assert [e.calls for e in experts] == [50, 50, 50]
    stats = precompute_cache(store, experts, context, 3, batch_size=16, progress=False)
    assert [e.calls for e in experts] == [50, 50, 50]
    assert all(s.computed == 0 and s.already_cached == 50 for s in stats)


def test_new_series_compute_only_what_is_missing(store: Store) -> None:
    """Adding windows computes only the new ones; duplicates inside a batch run once."""
    expert = FakeForecaster("moirai")
    old = _context(20)
    precompute_cache(store, [expert], old, 3, progress=False)
    new = np.concatenate([old, _context(5, seed=1), _context(5, seed=1)])
    stats = precompute_cache(store, [expert], new, 3, progress=False)
    assert expert.calls == 25 and stats[0].computed == 5 and stats[0].distinct == 25


class _CrashingExpert(FakeForecaster):
    """Fails on its n-th forecast call, like a process killed mid-precompute."""

    def __init__(self, fail_on_call: int) -> None:
        super().__init__("moirai")
        self.fail_on_call = fail_on_call
        self.batches = 0

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        self.batches += 1
        if self.batches == self.fail_on_call:
            raise RuntimeError("killed")
        return super().forecast(context, horizon)


def test_interrupted_precompute_resumes(store: Store) -> None:
    """Parts written before a crash are kept; the rerun computes only the rest."""
    context = _context(100)
    crashing = _CrashingExpert(fail_on_call=5)  # parts of 20 rows = 2 batches of 10
    with pytest.raises(RuntimeError, match="killed"):
        precompute_cache(
            store, [crashing], context, 3, batch_size=10, rows_per_part=20, progress=False
        )
    assert crashing.calls == 40  # two whole parts landed
    resumed = FakeForecaster("moirai")
    stats = precompute_cache(store, [resumed], context, 3, batch_size=10, progress=False)
    assert stats[0].already_cached == 40 and resumed.calls == 60


def test_read_back_matches_live_forecasts(store: Store) -> None:
    """load_cached returns (N, E, H) and quantiles exactly as the experts produced them."""
    experts = fake_trio()
    context = _context(30)
    context[3, 2] = np.nan  # missing values hash and round-trip too
    precompute_cache(store, experts, context, 4, batch_size=7, progress=False)
    points, quantiles = load_cached(store, experts, context[::-1].copy(), 4)
    assert points.shape == (30, 3, 4) and quantiles.shape == (30, 3, 4, 11)
    live = experts[1].forecast(torch.from_numpy(context[::-1].copy()), 4)
    torch.testing.assert_close(points[:, 1], live.point)
    torch.testing.assert_close(quantiles[:, 1], live.quantiles)


def test_missing_windows_raise(store: Store) -> None:
    """Reading windows that were never computed names the expert and the count."""
    with pytest.raises(LookupError, match="moirai"):
        load_cached(store, [FakeForecaster("moirai")], _context(3), 2)


def test_a_batch_cached_meanwhile_is_not_stored_twice(store: Store) -> None:
    """Two precomputes that both computed the same windows store each window once."""
    from storage.cache import CachedModel, write_forecasts
    from storage.sql import query

    model = CachedModel("moirai", "fake:moirai", 8, 3)
    hashes = [f"h{i}" for i in range(10)]
    point = np.arange(30, dtype=np.float32).reshape(10, 3)
    write_forecasts(store, model, hashes[:6], point[:6], None, "first")
    write_forecasts(store, model, hashes, point, None, "second")  # 4 new, 6 cached meanwhile
    write_forecasts(store, model, hashes[:6], point[:6], None, "third")  # all cached: no part
    rows = query(store, "SELECT window_hash FROM expert_forecasts").column(0).to_pylist()
    assert sorted(rows) == sorted(hashes)
    parts = store.table_dir("expert_forecasts").glob("cache=*/*.parquet")
    assert sorted(p.stem for p in parts if "_empty" not in str(p)) == ["first", "second"]


class _KeySpelledAnew(FakeForecaster):
    """A fake whose ``cache_key`` an older version spelled ``old:<name>``."""

    @property
    def cache_key(self) -> str:
        return f"new:{self.name}"

    @property
    def legacy_cache_keys(self) -> tuple[str, ...]:
        return (f"old:{self.name}",)


class _KeySpelledOld(FakeForecaster):
    """The same model as an older version keyed it."""

    @property
    def cache_key(self) -> str:
        return f"old:{self.name}"


def test_rows_under_an_older_key_spelling_stay_cache_hits(store: Store) -> None:
    """Guards legacy_cache_keys: rows stored under an old key spelling are read, not recomputed."""
    from storage.sql import query

    context = _context(10)
    precompute_cache(store, [_KeySpelledOld("timemoe", factor=3.0)], context[:6], 3, progress=False)
    expert = _KeySpelledAnew("timemoe", factor=3.0)
    stats = precompute_cache(store, [expert], context, 3, progress=False)
    assert expert.calls == 4 and stats[0].already_cached == 6 and stats[0].computed == 4
    points, _ = load_cached(store, [expert], context, 3)
    expected = FakeForecaster("timemoe", factor=3.0).forecast(torch.from_numpy(context), 3).point
    torch.testing.assert_close(points[:, 0], expected)
    keys = query(store, "SELECT cache_key FROM expert_forecasts").column(0).to_pylist()
    assert sorted(keys) == ["new:timemoe"] * 4 + ["old:timemoe"] * 6  # new rows: new key only
