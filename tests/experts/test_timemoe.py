"""Time-MoE adapter on a tiny random instance of the real architecture (offline, CPU)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import moe.experts.timemoe as timemoe_module
from moe.experts.base import Expert, ExpertConfig, ExpertLoadError, MissingExtraError
from moe.experts.timemoe import CHECKPOINT_ENV_VAR, TimeMoEForecaster, build
from tests.experts.tiny_timemoe import make_tiny, tiny_model

NAN = float("nan")


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matmuls are slower with thread contention on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory holding the saved tiny checkpoint."""
    directory = tmp_path_factory.mktemp("tiny_timemoe")
    make_tiny(directory)
    return directory


@pytest.fixture(scope="module")
def expert(tiny_dir: Path, monkeypatch_module: pytest.MonkeyPatch) -> TimeMoEForecaster:
    """The tiny checkpoint loaded through ``build()`` with HF_HUB_OFFLINE=1, batch size 2."""
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    return build(ExpertConfig(checkpoint=str(tiny_dir), batch_size=2))


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    """A module-scoped monkeypatch."""
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def _series(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """Trend + season + noise on different levels and scales, ``(rows, length)`` float32."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(length, dtype=torch.float32)
    level = torch.linspace(-50.0, 500.0, rows).unsqueeze(1)
    scale = torch.linspace(0.5, 20.0, rows).unsqueeze(1)
    season = torch.sin(2 * torch.pi * steps / 7)
    noise = torch.randn(rows, length, generator=generator)
    return level + scale * (0.05 * steps + season + 0.3 * noise)


def test_round_trip_loads_the_saved_weights(expert: TimeMoEForecaster) -> None:
    """Guards against loading that silently re-initialises weights or RoPE tables (meta device)."""
    saved = tiny_model()
    loaded = expert._model
    assert isinstance(expert, Expert)
    assert loaded.state_dict().keys() == saved.state_dict().keys()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    buffers = dict(loaded.named_buffers())
    for name, tensor in saved.named_buffers():  # non-persistent, not in the checkpoint
        assert torch.allclose(buffers[name], tensor, atol=1e-6), name


def test_capabilities_and_cache_key(expert: TimeMoEForecaster, tiny_dir: Path) -> None:
    """Guards the declared limits and that the cache key names checkpoint, content and dtype."""
    caps = expert.capabilities
    assert (caps.max_context, caps.min_context, caps.native_horizon) == (64, 1, 4)
    assert caps.quantile_levels == () and caps.handles_missing is False
    assert expert.name == "timemoe"
    assert str(tiny_dir) in expert.cache_key and "sha256:" in expert.cache_key
    bf16 = build(ExpertConfig(checkpoint=str(tiny_dir), dtype="bfloat16"))
    assert bf16.cache_key != expert.cache_key


@pytest.mark.parametrize("horizon", [1, 3, 4, 11])
def test_shapes_and_dtype(expert: TimeMoEForecaster, horizon: int) -> None:
    """Guards (B, H) float32 output, finite values and quantiles None, incl. H > largest head."""
    forecast = expert.forecast(_series(5, 30), horizon)
    assert forecast.point.shape == (5, horizon)
    assert forecast.point.dtype == torch.float32
    assert forecast.quantiles is None
    assert torch.isfinite(forecast.point).all()


def test_long_horizon_continues_the_native_forecast(expert: TimeMoEForecaster) -> None:
    """Guards the autoregressive loop: its first step is the largest head's one-shot forecast."""
    context = _series(3, 30)
    native = expert.forecast(context, 4).point
    rolled = expert.forecast(context, 10).point
    torch.testing.assert_close(rolled[:, :4], native)
    assert not torch.allclose(rolled[:, 4:8], native)  # later steps really are new predictions


def test_forecast_follows_the_series_scale(expert: TimeMoEForecaster) -> None:
    """Guards normalisation: scaling and shifting the context maps the forecast the same way."""
    context = _series(3, 30)
    base = expert.forecast(context, 6).point
    moved = expert.forecast(context * 1000.0 + 5e4, 6).point
    torch.testing.assert_close(moved, base * 1000.0 + 5e4, rtol=1e-4, atol=1e-2)


def test_constant_and_single_value_contexts(expert: TimeMoEForecaster) -> None:
    """Guards division by a zero scale: constant rows and one-point rows stay finite."""
    context = torch.tensor([[3.0] * 8, [NAN] * 7 + [2.5], [1e6] * 8])
    point = expert.forecast(context, 5).point
    assert torch.isfinite(point).all()


@pytest.mark.parametrize("length", [1, 4])
def test_short_context_works(expert: TimeMoEForecaster, length: int) -> None:
    """Guards contexts shorter than any head (no padding needed, tokens are single points)."""
    point = expert.forecast(_series(3, length), 6).point
    assert point.shape == (3, 6) and torch.isfinite(point).all()


def test_leading_nan_is_masked_padding(expert: TimeMoEForecaster) -> None:
    """Guards the padding mask: leading NaN forecast exactly like the row without them."""
    context = _series(2, 20)
    padded = torch.cat([torch.full((2, 9), NAN), context], dim=1)
    padded[1, 9:12] = NAN  # rows with different amounts of padding in one batch
    torch.testing.assert_close(
        expert.forecast(padded, 7).point[0], expert.forecast(context[:1], 7).point[0]
    )
    torch.testing.assert_close(
        expert.forecast(padded, 7).point[1], expert.forecast(context[1:, 3:], 7).point[0]
    )


def test_long_context_is_truncated(expert: TimeMoEForecaster) -> None:
    """Guards truncation to max_context: older values beyond it do not change the forecast."""
    context = _series(3, 100)
    torch.testing.assert_close(
        expert.forecast(context, 9).point, expert.forecast(context[:, -64:], 9).point
    )
    assert torch.isfinite(expert.forecast(_series(2, 60), 12).point).all()  # window slides


def test_model_sees_interpolated_normalised_values(
    expert: TimeMoEForecaster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the wiring: masked leading gap, interpolated interior, observed-only mean/std."""
    seen: dict[str, torch.Tensor] = {}
    real_rollout = timemoe_module._rollout

    def spy(model: Any, sequence: torch.Tensor, attend: torch.Tensor, *rest: Any) -> torch.Tensor:
        seen["sequence"], seen["attend"] = sequence.clone(), attend.clone()
        return real_rollout(model, sequence, attend, *rest)

    monkeypatch.setattr(timemoe_module, "_rollout", spy)
    context = torch.tensor([[NAN, NAN, 1.0, 2.0, NAN, NAN, 5.0, 9.0, NAN]])
    point = expert.forecast(context, 3).point
    observed = torch.tensor([1.0, 2.0, 5.0, 9.0])
    mean, std = observed.mean(), observed.std()  # unbiased, as Time-MoE normalises
    filled = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 9.0])
    expected = torch.cat([torch.zeros(2), (filled - mean) / std]).unsqueeze(0)
    torch.testing.assert_close(seen["sequence"], expected)
    assert seen["attend"].tolist() == [[False, False] + [True] * 7]
    assert torch.isfinite(point).all()


def test_bad_rows_are_rejected_by_index(expert: TimeMoEForecaster) -> None:
    """Guards clear errors for all-NaN rows, infinities and malformed arguments."""
    context = _series(3, 10)
    context[1] = NAN
    with pytest.raises(ValueError, match=r"rows \[1\] have no observed value"):
        expert.forecast(context, 3)
    context = _series(3, 10)
    context[2, 4] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[2\] contain \+-inf"):
        expert.forecast(context, 3)
    with pytest.raises(ValueError, match=r"\(B, L\) tensor, got \(10,\)"):
        expert.forecast(torch.zeros(10), 3)
    with pytest.raises(ValueError, match="horizon must be an int >= 1, got 0"):
        expert.forecast(_series(2, 10), 0)


def test_output_can_enter_a_gate_graph(expert: TimeMoEForecaster) -> None:
    """Guards against inference-mode tensors, which break gate training (w * forecast)."""
    point = expert.forecast(_series(2, 12), 3).point
    assert not point.requires_grad
    weight = torch.ones(2, 1, requires_grad=True)
    (weight * point).sum().backward()
    assert weight.grad is not None


def test_observations_only_beyond_max_context_are_rejected(expert: TimeMoEForecaster) -> None:
    """Guards the truncation edge: a row observed only before the window gets a clear error."""
    context = _series(2, 80)
    context[0, -64:] = NAN
    with pytest.raises(ValueError, match=r"rows \[0\] have no observed value in the last 64"):
        expert.forecast(context, 3)


def test_batch_equals_rows_one_by_one(expert: TimeMoEForecaster) -> None:
    """Guards batching (batch_size=2 over 5 rows, mixed padding) against cross-row leakage."""
    context = _series(5, 25)
    context[1, :6] = NAN
    context[3, 10] = NAN
    batched = expert.forecast(context, 9).point
    single = torch.cat([expert.forecast(context[i : i + 1], 9).point for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)


def test_deterministic_and_input_untouched(expert: TimeMoEForecaster) -> None:
    """Guards purity: same input gives identical output, and the caller's tensor is unchanged."""
    context = _series(4, 20)
    context[0, :3] = NAN
    context[2, 7] = NAN
    before = context.clone()
    first = expert.forecast(context, 10).point
    second = expert.forecast(context, 10).point
    assert torch.equal(first, second)
    assert torch.equal(torch.isnan(context), torch.isnan(before))
    assert torch.equal(context.nan_to_num(), before.nan_to_num())


def test_empty_batch(expert: TimeMoEForecaster) -> None:
    """Guards B == 0: an empty (0, H) forecast rather than a crash in torch.cat."""
    assert expert.forecast(torch.empty(0, 12), 5).point.shape == (0, 5)


def test_bfloat16_path_on_cpu(tiny_dir: Path) -> None:
    """Guards the reduced-precision path the GPU uses (bf16 weights, float32 output)."""
    config = ExpertConfig(checkpoint=str(tiny_dir), dtype="bfloat16", batch_size=3)
    bf16 = build(config)
    assert next(bf16._model.parameters()).dtype == torch.bfloat16
    context = _series(4, 20)
    point = bf16.forecast(context, 6).point
    assert point.dtype == torch.float32 and point.device == context.device
    reference = build(ExpertConfig(checkpoint=str(tiny_dir))).forecast(context, 6).point
    scale = context.std(dim=1, keepdim=True)
    assert ((point - reference).abs() / scale).max() < 0.2


def test_missing_hub_id_offline_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the load error: names id, where it looked and how to provide weights; no fallback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExpertLoadError) as info:
        build(ExpertConfig(checkpoint="no-such-org/no-such-timemoe", revision="abc123"))
    message = str(info.value)
    for needle in (
        "'no-such-org/no-such-timemoe'",
        "'abc123'",
        "Hugging Face cache",
        "HF_HUB_OFFLINE=1",
        "huggingface-cli download no-such-org/no-such-timemoe --revision abc123",
        CHECKPOINT_ENV_VAR,
    ):
        assert needle in message, needle


def test_default_checkpoint_missing_offline_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the default id (Maple728/TimeMoE-50M) being named when nothing is cached."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(CHECKPOINT_ENV_VAR, raising=False)
    try:
        expert = build(ExpertConfig())
    except ExpertLoadError as error:
        assert "Maple728/TimeMoE-50M" in str(error)
    else:  # real weights happen to be cached on this machine: they must then be the default
        assert "Maple728/TimeMoE-50M" in expert.cache_key


def test_hub_id_loads_offline_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the hub path: offline load from the HF cache, cache key names the exact commit."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someorg--tiny-timemoe"
    tiny_model().save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    unpinned = build(ExpertConfig(checkpoint="someorg/tiny-timemoe"))
    assert unpinned.cache_key.startswith(f"timemoe|someorg/tiny-timemoe|{commit}|")
    pinned = build(ExpertConfig(checkpoint="someorg/tiny-timemoe", revision=commit))
    assert pinned.cache_key == unpinned.cache_key
    with pytest.raises(ExpertLoadError, match=f"revision 'v9'.*{tmp_path}"):
        build(ExpertConfig(checkpoint="someorg/tiny-timemoe", revision="v9"))


def test_missing_directory_raises(tmp_path: Path) -> None:
    """Guards local paths: a missing or empty directory is an error naming that directory."""
    missing = tmp_path / "nope"
    with pytest.raises(ExpertLoadError, match="does not exist") as info:
        build(ExpertConfig(checkpoint=str(missing)))
    assert str(missing) in str(info.value) and "huggingface-cli download" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExpertLoadError, match="could not be loaded from directory") as info:
        build(ExpertConfig(checkpoint=str(empty)))
    assert str(empty) in str(info.value)


def test_env_var_overrides_default(monkeypatch: pytest.MonkeyPatch, tiny_dir: Path) -> None:
    """Guards MOE_TIMEMOE_CHECKPOINT: used when config.checkpoint is None, errors name it."""
    monkeypatch.setenv(CHECKPOINT_ENV_VAR, str(tiny_dir))
    assert str(tiny_dir) in build(ExpertConfig()).cache_key
    monkeypatch.setenv(CHECKPOINT_ENV_VAR, "/definitely/not/here")
    with pytest.raises(ExpertLoadError, match="/definitely/not/here"):
        build(ExpertConfig())


def test_mismatched_checkpoint_is_refused(tmp_path: Path) -> None:
    """Guards against running with partly random weights when the checkpoint lacks tensors."""
    from safetensors.torch import load_file, save_file

    make_tiny(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["lm_heads.0.out_layer.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExpertLoadError, match="refusing to run with randomly initialised"):
        build(ExpertConfig(checkpoint=str(tmp_path)))


def test_store_filled_under_the_old_sha256_dash_key_keeps_its_hits(
    expert: TimeMoEForecaster, tiny_dir: Path, tmp_path: Path
) -> None:
    """Guards the cache-key spelling change (sha256- -> sha256:): old cache rows still hit."""
    import hashlib

    import numpy as np

    from pipeline.precompute import load_cached, precompute_cache
    from storage import Store
    from storage.cache import CachedModel, window_hashes, write_forecasts

    digest = hashlib.sha256()  # the label as versions before 2026-12 computed and spelled it
    for file in sorted([tiny_dir / "config.json", *tiny_dir.glob("*.safetensors")]):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    label = digest.hexdigest()[:16]
    old_key = f"timemoe|{tiny_dir.resolve()}|sha256-{label}|torch.float32|ctx64"
    assert expert.legacy_cache_keys == (old_key,)
    assert expert.cache_key == old_key.replace("sha256-", "sha256:")
    store = Store.open(tmp_path / "store")
    context = _series(3, 10).numpy()
    stored = np.arange(9, dtype=np.float32).reshape(3, 3)  # not what the model would say
    write_forecasts(
        store, CachedModel("timemoe", old_key, 10, 3), window_hashes(context), stored, None
    )
    stats = precompute_cache(store, [expert], context, 3, progress=False)
    assert stats[0].computed == 0 and stats[0].already_cached == 3
    points, _ = load_cached(store, [expert], context, 3, with_quantiles=False)
    assert torch.equal(points[:, 0], torch.from_numpy(stored))


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Guards the MissingExtraError when sktime (which ships the architecture) is absent."""
    monkeypatch.setitem(sys.modules, "sktime.libs.timemoe", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r"'sktime'.*\.\[timemoe\]"):
        build(ExpertConfig())
