"""Safe promotion: the gate must beat the best single expert and the best constant pair."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from moe.artifact import load_artifact
from moe.constant_pair import ConstantPair, best_constant_pair, constant_pair_gate
from moe.experts.base import QUANTILE_LEVELS, ExpertForecast
from moe.experts.fake import FakeForecaster
from moe.router import select_top2
from moe.training import TrainConfig, train_gate
from pipeline.config import RetrainConfig
from pipeline.promotion import judge
from pipeline.retrain import retrain
from storage import Store
from storage.registry import champion
from storage.sql import query


def test_judge_uses_the_gate_only_when_it_beats_both_bars() -> None:
    """Guards each branch of the decision: beats both, loses to single, to pair, NaN."""
    single, pair = ("autoets", 1.0), ("a*0.5+b*0.5", 0.9)
    assert judge(0.8, single, pair, 10).use_gate
    lost_single = judge(1.1, ("autoets", 1.0), ("p", 1.2), 10)
    assert not lost_single.use_gate and "best single expert" in lost_single.reason
    lost_pair = judge(0.95, single, pair, 10)
    assert not lost_pair.use_gate and "the pair" in lost_pair.reason
    assert "best single" not in lost_pair.reason.split("does not beat")[1]
    assert not judge(0.9, single, pair, 10).use_gate  # a tie is not a win
    assert not judge(math.nan, single, pair, 10).use_gate
    assert judge(0.8, single, pair, 10).details["candidate"] == "gate"


def test_best_constant_pair_finds_pair_and_weight() -> None:
    """Guards pair selection: y = 0.7 a + 0.3 b exactly, so (a, b, 0.7) must win."""
    rng = np.random.default_rng(0)
    context = rng.normal(size=(50, 12))
    a, b, c = (rng.normal(size=(50, 4)) for _ in range(3))
    target = 0.7 * a + 0.3 * b
    points = np.stack([c, a, b], axis=1)  # (N, E=3, H)
    pair = best_constant_pair(points, target, context, 1)
    assert (pair.first, pair.second, pair.weight) == (1, 2, 0.7)
    assert pair.train_mase == pytest.approx(0.0, abs=1e-9)


def test_constant_pair_gate_routes_every_window_to_the_pair() -> None:
    """Guards the fallback router: always the same two experts with exactly w and 1 - w."""
    gate = constant_pair_gate(8, 3, 4, ConstantPair(3, 1, 0.8, 0.0))
    selection = select_top2(gate(torch.randn(20, 8) * 100, None))
    assert (selection.indices == torch.tensor([3, 1])).all()
    torch.testing.assert_close(selection.weights, torch.tensor([[0.8, 0.2]]).expand(20, 2))


class _Slope(FakeForecaster):
    """Forecasts ``last + slope * h``: right on series that move by ``slope`` per step."""

    def __init__(self, name: str, slope: float) -> None:
        super().__init__(name)
        self.slope = slope

    @property
    def cache_key(self) -> str:
        return f"fake-slope:{self.name}:{self.slope}"

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        steps = torch.arange(1, horizon + 1, dtype=torch.float32)
        point = context[:, -1:] + self.slope * steps  # (B, H)
        spread = torch.tensor([q - 0.5 for q in QUANTILE_LEVELS])
        quantiles = point[:, :, None] + spread * (1.0 + point.abs()[:, :, None])
        return ExpertForecast(point=point.float(), quantiles=quantiles.float())


def _routable_file(path: Path, n_series: int = 40, length: int = 60) -> Path:
    """Positive rising series ('up' is right) and negative falling ones ('down' is right):
    the sign of the scaled window tells the gate which, a constant pair cannot."""
    rng = np.random.default_rng(0)
    t = np.arange(length)
    with open(path, "w") as handle:
        for index in range(n_series):
            sign = 1.0 if index % 2 else -1.0
            values = sign * (100 + t) + 0.05 * rng.standard_normal(length)
            record = {"series_id": f"r{index:03d}", "sequence": values.round(4).tolist()}
            handle.write(json.dumps(record) + "\n")
    return path


def _config(path: Path, **train: object) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "jsonl_paths": [str(path)],
            "input_length": 12,
            "pred_length": 4,
            "max_windows_per_series": 5,
            "season_length": 1,
            "train": {"epochs": 30, "batch_size": 16, "lr": 0.1, "init": "best_pair", **train},
        }
    )


def _experts() -> list[FakeForecaster]:
    return [_Slope("up", 1.0), _Slope("down", -1.0), FakeForecaster("double", factor=2.0)]


def test_gate_that_routes_well_is_registered_and_promoted(store: Store, tmp_path: Path) -> None:
    """Guards the 'gate wins' branch: flat vs ramp windows are told apart by the gate."""
    result = retrain(store, _config(_routable_file(tmp_path / "r.jsonl")), experts=_experts())
    assert result.candidate == "gate", result.reason
    assert result.promoted and "the gate beats both" in result.reason
    overall = result.scores.overall()
    assert overall["mixture"]["mase"] == overall["learned_gate"]["mase"]
    assert overall["mixture"]["mase"] < overall["constant_pair"]["mase"]


def _untrained_fit(
    context: torch.Tensor,
    target: torch.Tensor,
    points: torch.Tensor,
    *,
    validation_mask: torch.Tensor,
    seed: int = 0,
    **_: object,
) -> SimpleNamespace:
    """Stands in for ``fit_gate``: a random gate with no training (it loses the backtest)."""
    config = TrainConfig(epochs=0, init="random", seed=seed)
    result = train_gate(context, target, points, config, validation_mask=validation_mask)
    return SimpleNamespace(result=result, summary=lambda: {"chosen": "untrained (test)"})


def test_losing_gate_is_replaced_by_the_constant_pair(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the fallback: an untrained random gate loses, the constant pair is registered,
    promoted as first model, and the registry and artifact say why."""
    path = _routable_file(tmp_path / "r.jsonl")
    monkeypatch.setattr("pipeline.retrain.fit_gate", _untrained_fit)  # the selection would win
    result = retrain(store, _config(path), experts=_experts())
    assert result.candidate == "constant_pair" and result.promoted
    assert "so the constant pair" in result.reason and "first model" in result.reason
    artifact = load_artifact(result.artifact_path)
    assert artifact.metrics["promotion"]["candidate"] == "constant_pair"
    assert artifact.metrics["constant_pair"]["experts"][0] in {"up", "down"}
    gate = artifact.build_gate()
    picks = select_top2(gate(torch.randn(30, 12), None)).indices
    assert (picks == picks[0]).all()  # the same two experts for every window
    reason = (
        query(store, "SELECT reason FROM model_events WHERE event = 'promoted'")
        .column(0)[0]
        .as_py()
    )
    assert "constant pair" in reason
    overall = result.scores.overall()
    assert overall["mixture"]["mase"] == overall["constant_pair"]["mase"]
    metrics = json.loads(
        query(store, "SELECT metrics_json FROM model_registry").column(0)[0].as_py()
    )
    assert metrics["promotion"]["candidate"] == "constant_pair"
    assert champion(store).model_version == result.model_version


def test_champion_with_a_shorter_context_is_compared_not_replaced(
    store: Store, tmp_path: Path
) -> None:
    """Guards the upgrade path: a champion trained on 12-point contexts is scored on a
    16-point retrain's windows (from their newest 12 points) instead of counting as unable
    to forecast them, so a challenger must still beat it; a longer-context champion cannot
    be scored and is replaced."""
    path = _routable_file(tmp_path / "r.jsonl")
    first = retrain(store, _config(path), experts=_experts())
    assert first.promoted and first.candidate == "gate"
    longer = _config(path).model_copy(update={"input_length": 16, "min_context": 12})
    strict = longer.model_copy(update={"promotion_margin": 0.5})
    second = retrain(store, strict, experts=_experts())
    assert second.champion_mase is not None and math.isfinite(second.champion_mase)
    assert f"vs champion {first.model_version}" in second.reason
    assert not second.promoted  # the same experts cannot be 50% better than the champion
    assert champion(store).model_version == first.model_version

    shorter = retrain(
        store, _config(path).model_copy(update={"input_length": 8}), experts=_experts()
    )
    assert shorter.champion_mase == math.inf and shorter.promoted
