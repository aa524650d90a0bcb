"""The shared expert contract, run against every registered expert and the fake expert."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from moe.experts import EXPERT_NAMES, FOUNDATION_EXPERTS, Expert, build_expert
from moe.experts.fake import FakeForecaster
from tests.experts.contract import assert_expert_contract


def _tiny_global_mlp(directory: Path) -> Expert:
    """A global MLP trained briefly on sine windows, saved and loaded via the registry."""
    from moe.experts.base import ExpertConfig
    from moe.experts.global_mlp import GlobalMLPConfig, save_global_mlp, train_global_mlp

    steps = np.arange(20)[None, :] + np.arange(64)[:, None]  # (64, 20)
    _SMALL = GlobalMLPConfig(epochs=3, width=32, depth=2, min_steps=1)  # noqa: N806
    values = 10 + 3 * np.sin(2 * np.pi * steps / 6)
    expert, _ = train_global_mlp(values[:, :16], values[:, 16:], _SMALL)
    path = save_global_mlp(expert, directory / "global_mlp.pt")
    return build_expert("global_mlp", ExpertConfig(checkpoint=str(path)))


def _tiny_global_trees(directory: Path) -> Expert:
    """Global trees trained briefly on sine windows, saved and loaded via the registry."""
    from moe.experts.base import ExpertConfig
    from moe.experts.global_trees import GlobalTreesConfig, save_global_trees, train_global_trees

    steps = np.arange(20)[None, :] + np.arange(64)[:, None]  # (64, 20)
    values = 10 + 3 * np.sin(2 * np.pi * steps / 6)
    small = GlobalTreesConfig(input_points=16, max_iter=5, max_leaf_nodes=4)
    expert, _ = train_global_trees(values[:, :16], values[:, 16:], small)
    path = save_global_trees(expert, directory / "global_trees.pt")
    return build_expert("global_trees", ExpertConfig(checkpoint=str(path)))


def _factory(name: str) -> Callable[[Path], Expert]:
    """How the contract test gets expert ``name``: tiny real architectures for foundation ones."""
    if name == "fake":
        return lambda _: FakeForecaster("fake", factor=1.5, offset=0.5)
    if name == "global_mlp":
        return _tiny_global_mlp
    if name == "global_trees":
        return _tiny_global_trees
    if name in FOUNDATION_EXPERTS:
        # Weights cannot be downloaded here: build a tiny random instance of the real
        # architecture, saved and reloaded through the expert's own loading path.
        return lambda directory: importlib.import_module(f"tests.experts.tiny_{name}").make_tiny(
            directory
        )
    return lambda _: build_expert(name)


@pytest.mark.parametrize("input_length", [4, 32])
@pytest.mark.parametrize("name", [*EXPERT_NAMES, "fake"])
def test_expert_contract(name: str, input_length: int, tmp_path: Path) -> None:
    """Guards the protocol for every expert: shapes, purity, NaN handling, batch == rows."""
    expert = _factory(name)(tmp_path)
    assert_expert_contract(expert, input_length=input_length, horizon=6)


def test_contract_catches_a_broken_expert() -> None:
    """Guards the contract helper itself: an expert that writes into its input must fail."""

    class Mutating(FakeForecaster):
        def forecast(self, context, horizon):  # type: ignore[no-untyped-def]
            result = super().forecast(context, horizon)
            context.nan_to_num_(0.0)
            return result

    with pytest.raises(AssertionError, match="modified the caller's context"):
        assert_expert_contract(Mutating("mutating"), input_length=8)


def test_contract_catches_batch_dependence() -> None:
    """Guards the contract helper itself: forecasts that depend on the batch must fail."""

    class BatchDependent(FakeForecaster):
        def forecast(self, context, horizon):  # type: ignore[no-untyped-def]
            result = super().forecast(context, horizon)
            shift = float(context.shape[0])
            return type(result)(point=result.point + shift, quantiles=result.quantiles + shift)

    with pytest.raises(AssertionError, match="alone vs in a batch"):
        assert_expert_contract(BatchDependent("batchy"), input_length=8)
