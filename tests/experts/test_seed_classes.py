"""The seed's expert modules and the registry: shapes, frozen, no grad, clear errors."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

import moe.seed.experts as seed
from moe.experts import (
    EXPERT_NAMES,
    FOUNDATION_EXPERTS,
    OFFLINE_EXPERTS,
    ExpertConfig,
    build_expert,
)
from moe.experts.fake import FakeForecaster
from moe.experts.registry import _BUILDERS, DEFAULT_POOL, EXTRA_STATISTICAL_EXPERTS
from moe.seed.experts import ExpertModule, MoiraiMoEExpert, TimeMoEExpert, TimesFMExpert

SEED_CLASSES = {"moirai": MoiraiMoEExpert, "timemoe": TimeMoEExpert, "timesfm": TimesFMExpert}


@pytest.fixture
def fake_registry(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ExpertConfig]]:
    """Replace the registry lookup in ``moe.seed.experts`` by fakes; record each request."""
    requests: list[tuple[str, ExpertConfig]] = []

    def build(name: str, config: ExpertConfig | None = None) -> FakeForecaster:
        assert config is not None
        requests.append((name, config))
        return FakeForecaster(name, factor=2.0)

    monkeypatch.setattr(seed, "build_expert", build)
    return requests


@pytest.mark.parametrize("key", sorted(SEED_CLASSES))
def test_seed_class_builds_its_registry_expert(key: str, fake_registry: list) -> None:
    """Guards the seed interface: each class wraps its own registry name, (B, L) -> (B, H)."""
    module = SEED_CLASSES[key](4, 2, "cpu")
    assert fake_registry == [(key, ExpertConfig(device="cpu"))]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, float("nan")]])
    out = module(x)
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, torch.tensor([[8.0, 8.0], [14.0, 14.0]]))


def test_device_argument_overrides_the_config_device(fake_registry: list) -> None:
    """Guards device handling: the seed's device argument wins, a config alone is respected."""
    config = ExpertConfig(device="cuda:1", batch_size=3)
    MoiraiMoEExpert(4, 2, "cpu", config=config)
    TimesFMExpert(4, 2, config=config)
    assert fake_registry[0][1] == ExpertConfig(device="cpu", batch_size=3)
    assert fake_registry[1][1] == config


def test_expert_module_is_frozen_and_gradient_free() -> None:
    """Guards 'frozen': no parameters or state, and no autograd graph even from a grad input."""
    module = ExpertModule(FakeForecaster("moirai"), input_length=3, pred_length=2)
    assert list(module.parameters()) == [] and module.state_dict() == {}
    x = torch.ones(4, 3, requires_grad=True)
    out = module(x)
    assert out.shape == (4, 2) and not out.requires_grad and out.grad_fn is None


def test_expert_module_does_not_register_a_module_expert() -> None:
    """Guards the gate's state_dict: an expert that is an nn.Module adds no parameters."""

    class ModuleExpert(torch.nn.Module, FakeForecaster):
        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            FakeForecaster.__init__(self, "timemoe")
            self.layer = torch.nn.Linear(3, 3)

    module = ExpertModule(ModuleExpert(), input_length=3, pred_length=1)
    assert list(module.parameters()) == [] and module.state_dict() == {}


@pytest.mark.parametrize("bad", [torch.ones(2, 5), torch.ones(4), torch.ones(1, 2, 4)])
def test_wrong_input_shape_names_expected_and_actual(bad: torch.Tensor) -> None:
    """Guards the boundary error: it names the expected (B, input_length) and the actual shape."""
    module = ExpertModule(FakeForecaster("timesfm"), input_length=4, pred_length=2)
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 4\), got \(") as info:
        module(bad)
    assert str(tuple(bad.shape)) in str(info.value)


def test_unknown_expert_name_lists_the_valid_ones() -> None:
    """Guards the registry error: an unknown name raises ValueError listing every valid name."""
    with pytest.raises(ValueError, match="unknown expert 'chronos'") as info:
        build_expert("chronos")
    for name in EXPERT_NAMES:
        assert name in str(info.value)


def test_registry_names_and_targets() -> None:
    """Guards the explicit mapping: seed order, every name resolves to a callable builder."""
    assert FOUNDATION_EXPERTS == ("moirai", "timemoe", "timesfm")
    assert OFFLINE_EXPERTS == ("seasonal_naive", "autoets", "autotheta", "fracast")
    assert EXTRA_STATISTICAL_EXPERTS == ("dynamic_theta", "autoces", "autoarima", "stat_ensemble")
    assert EXPERT_NAMES == (
        FOUNDATION_EXPERTS
        + OFFLINE_EXPERTS
        + EXTRA_STATISTICAL_EXPERTS
        + ("global_mlp", "global_trees")
    )
    assert set(_BUILDERS) == set(EXPERT_NAMES)
    for name, target in _BUILDERS.items():
        module_name, function_name = target.split(":")
        assert callable(getattr(importlib.import_module(module_name), function_name)), name


def test_default_pool_is_offline_and_the_retrain_default() -> None:
    """Guards the measured default (docs/ACCURACY.md accuracy10): the retrain's pool needs no
    download, and a config that names no experts gets exactly it."""
    from pipeline.config import RetrainConfig

    assert DEFAULT_POOL == ("seasonal_naive", "autotheta", "fracast", "stat_ensemble")
    assert set(DEFAULT_POOL) <= set(OFFLINE_EXPERTS + EXTRA_STATISTICAL_EXPERTS)
    assert RetrainConfig().experts == list(DEFAULT_POOL)
    for name in DEFAULT_POOL:
        assert build_expert(name).name == name


@pytest.mark.parametrize("name", OFFLINE_EXPERTS)
def test_offline_experts_build_without_weights_or_network(name: str) -> None:
    """Guards the offline route: each offline expert builds from the default config."""
    assert build_expert(name).name == name


def test_importing_moe_experts_loads_no_expert_library() -> None:
    """Guards lazy imports: `import moe.experts` must not import heavy expert libraries."""
    heavy = ["statsforecast", "fracast", "uni2ts", "transformers", "timesfm", "sktime", "pandas"]
    code = f"import sys, moe.experts; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("key", sorted(SEED_CLASSES))
def test_seed_class_on_tiny_real_weights(key: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Guards the seed interface end to end through the real loader on a tiny checkpoint."""
    importlib.import_module(f"tests.experts.tiny_{key}").make_tiny(tmp_path)
    module = SEED_CLASSES[key](8, 3, config=ExpertConfig(checkpoint=str(tmp_path)))
    x = torch.linspace(1.0, 2.0, 16).reshape(2, 8)
    out = module(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all() and not out.requires_grad
    assert list(module.parameters()) == []
