"""Moirai-MoE expert on a tiny random checkpoint saved and loaded like real weights (offline)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from moe.experts import _moirai_tokens, moirai
from moe.experts.base import (
    QUANTILE_LEVELS,
    Expert,
    ExpertConfig,
    ExpertLoadError,
    MissingExtraError,
)
from tests.experts.tiny_moirai import make_tiny, tiny_module

HORIZON_AR = 40  # three patches: two autoregressive steps
HORIZON_AR_SHORT = 20  # two patches: one autoregressive step
LONG = moirai.MAX_CONTEXT + 300


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # tiny matrices: a second intra-op thread only adds spin-waiting (20x CPU on a busy box)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("tiny_moirai")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield directory


@pytest.fixture(scope="module")
def expert(tiny_dir: Path) -> Expert:
    return make_tiny(tiny_dir)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _walks(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 50 + torch.randn(rows, length, generator=generator).cumsum(dim=1)


def _check_layout(forecast, rows: int, horizon: int) -> None:
    assert forecast.point.shape == (rows, horizon)
    assert forecast.quantiles is not None
    assert forecast.quantiles.shape == (rows, horizon, len(QUANTILE_LEVELS))
    assert forecast.point.dtype == forecast.quantiles.dtype == torch.float32
    assert torch.isfinite(forecast.quantiles).all()
    assert (forecast.quantiles.diff(dim=2) >= 0).all(), "quantiles must ascend with the level"
    median = forecast.quantiles[..., QUANTILE_LEVELS.index(0.5)]
    torch.testing.assert_close(forecast.point, median, rtol=0, atol=0)


def test_round_trip_loads_saved_weights(expert: Expert) -> None:
    """Loading through build() must return exactly the saved tensors, centroids included."""
    assert isinstance(expert, Expert)
    saved = tiny_module().state_dict()
    loaded = expert.module.state_dict()  # type: ignore[attr-defined]
    assert saved.keys() == loaded.keys()
    for key, tensor in saved.items():
        assert torch.equal(loaded[key], tensor), key
    assert torch.isfinite(loaded["encoder.centroid"]).all()


def test_capabilities_and_cache_key(expert: Expert, tiny_dir: Path) -> None:
    """Capabilities and cache key name the model's real limits and the exact weights."""
    caps = expert.capabilities
    assert (caps.min_context, caps.native_horizon, caps.max_context) == (16, 16, moirai.MAX_CONTEXT)
    assert caps.quantile_levels == QUANTILE_LEVELS and caps.handles_missing
    assert expert.cache_key.startswith(f"moirai|{tiny_dir.resolve()}@sha256:")
    assert "|float32|" in expert.cache_key


@pytest.mark.parametrize(
    ("length", "horizon"),
    [(5, 1), (5, 16), (5, HORIZON_AR), (40, 1), (40, HORIZON_AR), (LONG, 1), (LONG, 16)],
)
def test_shapes_short_long_and_autoregressive(expert: Expert, length: int, horizon: int) -> None:
    """Contexts below one patch, above MAX_CONTEXT, and horizons past one patch keep the layout."""
    _check_layout(expert.forecast(_walks(2, length), horizon), 2, horizon)


def test_long_context_is_truncated(expert: Expert) -> None:
    """Points older than MAX_CONTEXT must not influence the forecast."""
    context = _walks(2, moirai.MAX_CONTEXT + 100)
    changed = context.clone()
    changed[:, :100] = -1e6
    expected = expert.forecast(context[:, -moirai.MAX_CONTEXT :], 8).quantiles
    torch.testing.assert_close(expert.forecast(changed, 8).quantiles, expected, rtol=0, atol=0)


def test_short_context_equals_nan_left_padding(expert: Expert) -> None:
    """A 10-point context forecasts like the same points behind a run of leading NaN."""
    short = _walks(2, 10)
    padded = torch.cat([torch.full((2, 30), float("nan")), short], dim=1)
    first = expert.forecast(short, HORIZON_AR_SHORT).quantiles
    second = expert.forecast(padded, HORIZON_AR_SHORT).quantiles
    torch.testing.assert_close(second, first, rtol=1e-4, atol=1e-3)


def test_nan_inside_context_is_masked(expert: Expert) -> None:
    """NaN inside the context gives finite forecasts, and only the masked points change them."""
    context = _walks(2, 64)
    holed = context.clone()
    holed[0, 20:30] = float("nan")
    holed[1, -3:] = float("nan")  # the most recent points missing
    forecast = expert.forecast(holed, HORIZON_AR_SHORT)
    _check_layout(forecast, 2, HORIZON_AR_SHORT)
    assert not torch.equal(forecast.point, expert.forecast(context, HORIZON_AR_SHORT).point)


def test_all_nan_row_is_rejected(expert: Expert) -> None:
    """A row with nothing observed must raise and name the row, not forecast garbage."""
    context = _walks(3, 32)
    context[1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\] have no observed value"):
        expert.forecast(context, 4)


@pytest.mark.parametrize(
    ("context", "horizon", "message"),
    [
        (torch.ones(8), 4, "2-D tensor"),
        (torch.ones(2, 8, dtype=torch.long), 4, "floating point"),
        (torch.ones(2, 8), 0, "positive int"),
        (torch.tensor([[1.0, float("inf")]]), 4, "inf"),
        (torch.ones(1, 16), 16 * 600, "max_seq_len=512"),
    ],
)
def test_bad_input_is_rejected(expert: Expert, context, horizon: int, message: str) -> None:
    """Malformed calls raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        expert.forecast(context, horizon)


def test_batch_equals_rows_one_by_one(expert: Expert, tiny_dir: Path) -> None:
    """A row's forecast must not depend on its batch-mates or on the configured batch size."""
    context = _walks(3, 50)
    context[1, 10:14] = float("nan")
    together = expert.forecast(context, HORIZON_AR_SHORT).quantiles
    alone = torch.cat([expert.forecast(row[None], HORIZON_AR_SHORT).quantiles for row in context])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-3)
    small_batches = moirai.build(ExpertConfig(checkpoint=str(tiny_dir), batch_size=2))
    torch.testing.assert_close(
        small_batches.forecast(context, HORIZON_AR_SHORT).quantiles, together, rtol=1e-4, atol=1e-3
    )


def test_chunked_forward_calls_agree(expert: Expert, monkeypatch: pytest.MonkeyPatch) -> None:
    """Splitting the sample paths over several forward calls must not change the result."""
    context = _walks(2, 48)  # 3 patches; 200 paths of 4 and 5 patches in the AR steps
    whole = expert.forecast(context, HORIZON_AR).quantiles
    monkeypatch.setattr(moirai, "TOKENS_PER_CALL", 300)  # 75 and 60 paths per call
    torch.testing.assert_close(
        expert.forecast(context, HORIZON_AR).quantiles, whole, rtol=1e-4, atol=1e-3
    )


def test_deterministic_and_global_rng_untouched(expert: Expert) -> None:
    """Same input, same output; the caller's RNG stream is exactly as if nothing ran."""
    context = _walks(2, 40)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = expert.forecast(context, HORIZON_AR_SHORT)
    assert torch.equal(torch.rand(3), expected_next)
    second = expert.forecast(context, HORIZON_AR_SHORT)
    assert torch.equal(first.quantiles, second.quantiles)


def test_input_is_not_modified(expert: Expert) -> None:
    """forecast() must leave the caller's tensor (NaN included) bit-for-bit unchanged."""
    context = _walks(2, 40)
    context[0, 5:9] = float("nan")
    before = context.clone()
    expert.forecast(context, HORIZON_AR_SHORT)
    torch.testing.assert_close(context, before, rtol=0, atol=0, equal_nan=True)


def test_matches_library_token_layout(expert: Expert) -> None:
    """Our patches, ids and masks give the distributions of uni2ts' own _convert path."""
    from uni2ts.model.moirai_moe import MoiraiMoEForecast

    module = expert.module  # type: ignore[attr-defined]
    context = _walks(3, 40)
    patch = _walks(3, 16, seed=1)  # a sampled first forecast patch, fed back
    native = MoiraiMoEForecast(
        prediction_length=32,
        target_dim=1,
        feat_dynamic_real_dim=0,
        past_feat_dynamic_real_dim=0,
        context_length=64,
        module=module,
        patch_size=16,
        num_samples=1,
    )
    pad = torch.zeros(3, 24)
    future = torch.cat([patch, torch.zeros(3, 16)], dim=1)[..., None]
    tokens = native._convert(
        16,
        torch.cat([pad, context], dim=1)[..., None],
        torch.cat([pad.bool(), torch.ones(3, 40, dtype=torch.bool)], dim=1)[..., None],
        torch.cat([pad.bool().logical_not(), torch.zeros(3, 40, dtype=torch.bool)], dim=1),
        future_target=future,
    )
    target, observed, sample_id, time_id, variate_id, prediction_mask = tokens
    sizes = torch.full_like(time_id, 16)
    with torch.no_grad():
        first = module(target, observed, sample_id, time_id, variate_id, prediction_mask, sizes)
        prediction_mask = prediction_mask.clone()
        prediction_mask[:, 4] = False  # the library's autoregressive step: patch 4 now holds data
        second = module(target, observed, sample_id, time_id, variate_id, prediction_mask, sizes)

        ours = _moirai_tokens.tokenize(context, 16)
        last_time = ours.time_id.max(dim=1).values
        extended = _moirai_tokens.append(ours, patch[:, None], last_time)
        means = []
        for tokens_ in (ours, extended):
            params, loc, scale = expert._next_patch_params(tokens_)  # type: ignore[attr-defined]
            means.append(module.distr_output.distribution(params, loc, scale).mean)
    torch.testing.assert_close(means[0], first.mean[:, 3], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(means[1], second.mean[:, 4], rtol=1e-4, atol=1e-4)


def test_bfloat16_autocast_path(tiny_dir: Path, expert: Expert) -> None:
    """The bf16 path (what CUDA runs) works on CPU and stays near float32."""
    half = moirai.build(ExpertConfig(checkpoint=str(tiny_dir), dtype="bfloat16"))
    assert "|bfloat16|" in half.cache_key and half.cache_key != expert.cache_key
    context = _walks(3, 64)
    forecast = half.forecast(context, HORIZON_AR_SHORT)
    _check_layout(forecast, 3, HORIZON_AR_SHORT)
    reference = expert.forecast(context, HORIZON_AR_SHORT).point
    assert not torch.equal(forecast.point, reference), "autocast had no effect"
    spread = context.std(dim=1, keepdim=True)
    assert ((forecast.point - reference).abs() / spread).mean() < 0.2


def test_float16_and_missing_cuda_are_rejected(tiny_dir: Path) -> None:
    """Unsupported dtype and an absent GPU fail at build with a clear message."""
    with pytest.raises(ValueError, match="float16"):
        moirai.build(ExpertConfig(checkpoint=str(tiny_dir), dtype="float16"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            moirai.build(ExpertConfig(checkpoint=str(tiny_dir), device="cuda"))


def test_env_var_selects_checkpoint(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MOE_MOIRAI_CHECKPOINT replaces the default checkpoint when the config names none."""
    monkeypatch.setenv(moirai.CHECKPOINT_ENV_VAR, str(tiny_dir))
    assert str(tiny_dir.resolve()) in moirai.build(ExpertConfig()).cache_key


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv(moirai.CHECKPOINT_ENV_VAR, raising=False)
    return cache


@pytest.mark.parametrize("checkpoint", [None, "nobody/no-such-moirai"])
def test_missing_hub_weights_error(checkpoint: str | None, empty_hub_cache: Path) -> None:
    """Offline and uncached: ExpertLoadError names the id, where it looked and how to fix it."""
    with pytest.raises(ExpertLoadError) as raised:
        moirai.build(ExpertConfig(checkpoint=checkpoint, revision="abc123"))
    message = str(raised.value)
    name = checkpoint or moirai.DEFAULT_CHECKPOINT
    assert f"{name!r}" in message and "revision abc123" in message
    assert str(empty_hub_cache) in message and "HF_HUB_OFFLINE" in message
    assert f"huggingface-cli download {name} --revision abc123" in message
    assert moirai.CHECKPOINT_ENV_VAR in message and "local directory" in message


def test_missing_directory_error(tmp_path: Path) -> None:
    """A checkpoint path that does not exist, or lacks files, is reported as such."""
    absent = tmp_path / "nowhere" / "moirai"
    with pytest.raises(ExpertLoadError, match="does not exist") as raised:
        moirai.build(ExpertConfig(checkpoint=str(absent)))
    assert str(absent) in str(raised.value) and moirai.CHECKPOINT_ENV_VAR in str(raised.value)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ExpertLoadError, match=r"lacks \['model.safetensors'\]"):
        moirai.build(ExpertConfig(checkpoint=str(tmp_path / "half")))


def test_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without uni2ts, build() says which extra to install."""
    monkeypatch.setitem(sys.modules, "uni2ts.model.moirai_moe", None)
    with pytest.raises(MissingExtraError, match=r"\.\[moirai\]"):
        moirai.build(ExpertConfig())
