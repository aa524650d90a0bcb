"""TimesFM 2.5 expert on a tiny random instance loaded through the real loading path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from moe.experts.base import QUANTILE_LEVELS, Expert, ExpertConfig, ExpertLoadError
from moe.experts.timesfm import CHECKPOINT_ENV_VAR, DEFAULT_CHECKPOINT, build

from .tiny_timesfm import TINY_CONTEXT, TINY_HORIZON, TINY_QUANTILE_LEN, make_tiny, tiny_model

DECILE_COLUMNS = [QUANTILE_LEVELS.index(q) for q in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_timesfm")


@pytest.fixture(scope="module")
def expert(tiny_dir: Path) -> Expert:
    return make_tiny(tiny_dir)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Offline hub with an empty cache in tmp_path (never the user's real cache)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(CHECKPOINT_ENV_VAR, raising=False)
    return cache


def series(rows: int, length: int, seed: int = 1, level: float = 50.0) -> torch.Tensor:
    """Random walks ``(rows, length)`` float32 around ``level``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, length, generator=generator).cumsum(dim=1) + level


def test_loaded_weights_equal_saved(expert: Expert) -> None:
    """save_pretrained -> build must restore every tensor (no silent re-initialisation)."""
    reference = tiny_model(seed=0).state_dict()
    loaded = expert.model.state_dict()  # type: ignore[attr-defined]
    assert loaded.keys() == reference.keys()
    for key, tensor in reference.items():
        assert torch.equal(loaded[key], tensor), key


def test_matches_library_forward(expert: Expert) -> None:
    """Within the native horizon and full context, output equals the library's own forward.

    The only documented difference: deciles are made non-decreasing outward from the median
    (the timesfm package's fix_quantile_crossing), which transformers does not do.
    """
    model = expert.model  # type: ignore[attr-defined]
    for context in (series(3, TINY_CONTEXT), series(3, TINY_CONTEXT, seed=2, level=-5.0)):
        with torch.no_grad():
            reference = model(past_values=list(context))
        deciles = reference.full_predictions[..., 1:]  # (B, H, 9), median at index 4
        below = deciles[..., :5].flip(-1).cummin(dim=-1).values.flip(-1)
        above = deciles[..., 4:].cummax(dim=-1).values[..., 1:]
        forecast = expert.forecast(context, TINY_HORIZON)
        torch.testing.assert_close(forecast.point, reference.mean_predictions, rtol=1e-4, atol=1e-4)
        assert forecast.quantiles is not None
        torch.testing.assert_close(
            forecast.quantiles[..., DECILE_COLUMNS],
            torch.cat([below, above], dim=-1),
            rtol=1e-4,
            atol=1e-4,
        )
        crossed = (deciles[..., 1:] < deciles[..., :-1]).any()
        assert crossed, "tiny weights should make the library's raw deciles cross somewhere"


def test_shapes_and_layout_with_long_horizon(expert: Expert) -> None:
    """Horizons past the native block and the quantile head give (B,H)/(B,H,Q), NaN 5%/95%."""
    horizon = TINY_QUANTILE_LEN + 2 * TINY_HORIZON  # three AR blocks beyond the quantile head
    forecast = expert.forecast(series(4, 40), horizon)
    assert forecast.point.shape == (4, horizon)
    assert forecast.quantiles is not None
    assert forecast.quantiles.shape == (4, horizon, len(QUANTILE_LEVELS))
    assert forecast.point.dtype == forecast.quantiles.dtype == torch.float32
    assert torch.isfinite(forecast.point).all()
    assert torch.isfinite(forecast.quantiles[..., DECILE_COLUMNS]).all()
    assert torch.isnan(forecast.quantiles[..., QUANTILE_LEVELS.index(0.05)]).all()
    assert torch.isnan(forecast.quantiles[..., QUANTILE_LEVELS.index(0.95)]).all()
    median = forecast.quantiles[..., QUANTILE_LEVELS.index(0.5)]
    torch.testing.assert_close(forecast.point, median)
    steps = forecast.quantiles[..., DECILE_COLUMNS].diff(dim=-1)
    assert (steps >= 0).all(), "deciles must be non-decreasing"
    assert expert.capabilities.quantile_levels == tuple(QUANTILE_LEVELS[c] for c in DECILE_COLUMNS)


def test_long_horizon_extends_short_one(expert: Expert) -> None:
    """Autoregressive steps must append to, not change, the first native block."""
    context = series(3, 50)
    short = expert.forecast(context, TINY_HORIZON)
    long = expert.forecast(context, 3 * TINY_HORIZON + 5)
    torch.testing.assert_close(long.point[:, :TINY_HORIZON], short.point, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(long.point[:, TINY_HORIZON:], long.point[:, :1].expand(-1, 37))


def test_short_context_is_masked_padding(expert: Expert) -> None:
    """A 4-point context works and equals the same context left-padded with NaN."""
    context = series(3, 4)
    forecast = expert.forecast(context, 10)
    assert torch.isfinite(forecast.point).all()
    padded = torch.nn.functional.pad(context, (21, 0), value=float("nan"))
    torch.testing.assert_close(
        expert.forecast(padded, 10).point, forecast.point, rtol=1e-4, atol=1e-3
    )
    zero_padded = torch.nn.functional.pad(context, (21, 0), value=0.0)
    assert not torch.allclose(expert.forecast(zero_padded, 10).point, forecast.point, atol=1e-2)


def test_long_context_is_truncated(expert: Expert) -> None:
    """Contexts longer than max_context use only their last max_context points."""
    assert expert.capabilities.max_context == TINY_CONTEXT
    context = series(2, 3 * TINY_CONTEXT)
    torch.testing.assert_close(
        expert.forecast(context, 20).point,
        expert.forecast(context[:, -TINY_CONTEXT:], 20).point,
        rtol=1e-5,
        atol=1e-4,
    )


def test_nan_inside_context_reaches_model_as_mask(expert: Expert) -> None:
    """NaN becomes a masked zero in the model's input (not a value) and forecasts stay finite."""
    context = series(3, 64)  # a multiple of the patch: no extra left padding
    context[:, 10:17] = float("nan")
    context[1, -1] = float("nan")
    seen: dict[str, torch.Tensor] = {}

    def spy(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen.setdefault("values", kwargs["past_values"].clone())
        seen.setdefault("padding", kwargs["past_values_padding"].clone())

    handle = expert.model.model.register_forward_pre_hook(spy, with_kwargs=True)  # type: ignore[attr-defined]
    try:
        forecast = expert.forecast(context, 20)
    finally:
        handle.remove()
    missing = torch.isnan(context).repeat(2, 1)  # the flip-invariant pass doubles the batch
    assert torch.equal(seen["padding"].bool(), missing)
    assert (seen["values"][missing] == 0).all()
    assert torch.isfinite(seen["values"]).all()
    assert torch.isfinite(forecast.point).all()
    assert forecast.quantiles is not None
    assert torch.isfinite(forecast.quantiles[..., DECILE_COLUMNS]).all()


def test_autoregression_feeds_back_the_median(tmp_path: Path) -> None:
    """Steps past the native block equal a fresh forecast on context + first block's median."""
    plain = make_tiny(tmp_path, force_flip_invariance=False)  # flip runs two separate chains
    context = series(2, 40, level=-3.0)  # crosses zero: no clipping at 0
    first = plain.forecast(context, TINY_HORIZON).point
    long = plain.forecast(context, 2 * TINY_HORIZON).point
    fresh = plain.forecast(torch.cat([context, first], dim=1), TINY_HORIZON).point
    torch.testing.assert_close(long[:, TINY_HORIZON:], fresh, rtol=1e-3, atol=1e-3)


def test_batch_equals_rows_one_by_one(expert: Expert, tiny_dir: Path) -> None:
    """Each row's forecast is independent of its batch mates and of batch_size."""
    context = series(5, 70)
    context[0, 5:9] = float("nan")
    context[3] = context[3] - 200.0  # negative row next to positive ones
    together = expert.forecast(context, 30)
    alone = [expert.forecast(context[i : i + 1], 30) for i in range(5)]
    torch.testing.assert_close(
        together.point, torch.cat([f.point for f in alone]), rtol=1e-4, atol=1e-3
    )
    small_batches = build(ExpertConfig(checkpoint=str(tiny_dir), batch_size=2))
    torch.testing.assert_close(
        small_batches.forecast(context, 30).quantiles,
        together.quantiles,
        rtol=1e-4,
        atol=1e-3,
        equal_nan=True,
    )


def test_deterministic_and_input_untouched(expert: Expert) -> None:
    """Same input, same output; the caller's tensor (NaN included) is never modified."""
    context = series(3, 33)
    context[2, 3] = float("nan")
    before = context.clone()
    first = expert.forecast(context, 25)
    second = expert.forecast(context, 25)
    assert torch.equal(first.point, second.point)
    torch.testing.assert_close(context, before, rtol=0, atol=0, equal_nan=True)


def test_bfloat16_twin_close_to_float32(expert: Expert, tiny_dir: Path) -> None:
    """dtype='bfloat16' loads and runs (the GPU path's CPU twin) close to float32."""
    half = build(ExpertConfig(checkpoint=str(tiny_dir), dtype="bfloat16"))
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert half.cache_key != expert.cache_key
    context = series(2, 48)
    forecast = half.forecast(context, 20)
    assert forecast.point.dtype == torch.float32
    reference = expert.forecast(context, 20).point
    assert (forecast.point - reference).abs().max() < 0.1 * reference.abs().max()


def test_cache_key_names_checkpoint_and_weights(expert: Expert, tmp_path: Path) -> None:
    """cache_key carries the checkpoint and changes when the weights change."""
    assert expert.cache_key.startswith("timesfm|")
    other = make_tiny(tmp_path / "other", seed=1)
    assert str((tmp_path / "other").resolve()) in other.cache_key
    assert other.cache_key != expert.cache_key


def test_hub_cache_snapshot_with_pinned_revision(offline: Path, tiny_dir: Path) -> None:
    """A hub id found in the offline cache loads; its commit is in cache_key; bad pins fail."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline / "models--acme--tiny-timesfm"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = build(ExpertConfig(checkpoint="acme/tiny-timesfm"))
    assert loaded.cache_key == f"timesfm|acme/tiny-timesfm@{commit}|float32"
    assert build(ExpertConfig(checkpoint="acme/tiny-timesfm", revision=commit)).cache_key == (
        loaded.cache_key
    )
    with pytest.raises(ExpertLoadError, match="revision v9"):
        build(ExpertConfig(checkpoint="acme/tiny-timesfm", revision="v9"))


def test_env_var_overrides_default(
    offline: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MOE_TIMESFM_CHECKPOINT is used when the config names no checkpoint."""
    monkeypatch.setenv(CHECKPOINT_ENV_VAR, str(tiny_dir))
    assert str(tiny_dir.resolve()) in build(ExpertConfig()).cache_key


def test_missing_hub_weights_offline_explain_fix(offline: Path) -> None:
    """An uncached hub id offline raises ExpertLoadError naming id, place and remedies."""
    with pytest.raises(ExpertLoadError) as caught:
        build(ExpertConfig(checkpoint="nobody/no-such-timesfm"))
    message = str(caught.value)
    for needed in ("nobody/no-such-timesfm", str(offline), "HF_HUB_OFFLINE", CHECKPOINT_ENV_VAR):
        assert needed in message
    assert "huggingface-cli download nobody/no-such-timesfm" in message
    with pytest.raises(ExpertLoadError, match=DEFAULT_CHECKPOINT):
        build(ExpertConfig())


def test_missing_or_foreign_directory_is_refused(tmp_path: Path) -> None:
    """A nonexistent directory or a timesfm-package layout raises ExpertLoadError."""
    missing = tmp_path / "nowhere" / "timesfm"
    with pytest.raises(ExpertLoadError, match=str(missing)):
        build(ExpertConfig(checkpoint=str(missing)))
    foreign = tmp_path / "pytorch-layout"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({}))
    (foreign / "model.safetensors").write_bytes(b"")
    with pytest.raises(ExpertLoadError, match="timesfm2_5"):
        build(ExpertConfig(checkpoint=str(foreign)))


def test_incomplete_weights_are_refused(tiny_dir: Path, tmp_path: Path) -> None:
    """A checkpoint missing a tensor raises instead of silently initialising it at random."""
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    shutil.copytree(tiny_dir, partial)
    tensors = load_file(partial / "model.safetensors")
    dropped = next(key for key in tensors if "output_projection_point" in key)
    del tensors[dropped]
    save_file(tensors, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExpertLoadError, match="missing_keys"):
        build(ExpertConfig(checkpoint=str(partial)))


def test_bad_inputs_raise_clear_errors(expert: Expert) -> None:
    """Wrong rank, horizon, inf or all-NaN rows are rejected with the reason."""
    with pytest.raises(ValueError, match="2-D"):
        expert.forecast(torch.ones(8), 4)
    with pytest.raises(ValueError, match="horizon"):
        expert.forecast(torch.ones(2, 8), 0)
    with pytest.raises(ValueError, match="inf"):
        expert.forecast(torch.tensor([[1.0, float("inf")]]), 4)
    nan_row = torch.ones(3, 8)
    nan_row[1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        expert.forecast(nan_row, 4)
    with pytest.raises(ValueError, match="float16"):
        build(ExpertConfig(checkpoint="unused", dtype="float16"))
