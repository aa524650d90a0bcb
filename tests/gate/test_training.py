"""Gate training on the cache: defaults, scaling, reproducibility, validation, balance."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from moe._fast_linear import FastLinearTrainer
from moe.experts.base import Expert, ExpertCapabilities, ExpertForecast
from moe.experts.fake import fake_trio
from moe.gates import LinearGate, load_balancing_loss
from moe.router import mix, run_experts, select_top2
from moe.scaling import scale_context, seasonal_naive_scale, window_scale
from moe.training import TrainConfig, best_pair, train_gate, train_gate_live
from tests.gate.helpers import synthetic_windows


def _cached(n: int = 120, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Windows whose target is always the 'timemoe' fake's forecast."""
    context, _ = synthetic_windows(n, 6, 3, seed=seed)
    points, _ = run_experts(fake_trio(), context, 3)  # (N, 3, 3)
    return context, points[:, 1].clone(), points


def test_defaults_are_the_seeds() -> None:
    """Guards the seed's defaults: batch 8, 5 epochs, lr 1e-3, Huber delta 2, linear gate."""
    config = TrainConfig()
    assert (config.batch_size, config.epochs, config.lr, config.huber_delta) == (8, 5, 1e-3, 2.0)
    assert config.gate == "linear" and config.scaling == "mean_abs"
    with pytest.raises(ValidationError):
        TrainConfig(batch_size=0)
    with pytest.raises(ValidationError):
        TrainConfig(gate="dense")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        config.epochs = 3  # frozen
    with pytest.raises(ValidationError, match="only applies with init='best_pair'"):
        TrainConfig(start_pair=(0, 1))  # would be ignored silently with a random start


def test_same_seed_same_gate_other_seed_other_gate() -> None:
    """Guards reproducibility: init, split and shuffling all follow TrainConfig.seed."""
    context, target, points = _cached()
    first = train_gate(context, target, points, TrainConfig(seed=3, epochs=2))
    again = train_gate(context, target, points, TrainConfig(seed=3, epochs=2))
    other = train_gate(context, target, points, TrainConfig(seed=4, epochs=2))
    for key, value in first.gate.state_dict().items():
        assert torch.equal(value, again.gate.state_dict()[key])
    assert not torch.equal(
        first.gate.state_dict()["linear.weight"], other.gate.state_dict()["linear.weight"]
    )
    assert [e.as_dict() for e in first.history] == [e.as_dict() for e in again.history]


def test_training_does_not_touch_the_global_rng() -> None:
    """Guards style: training seeds its own generators and leaves torch's global RNG alone."""
    context, target, points = _cached(40)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_gate(context, target, points, TrainConfig(epochs=1))
    assert torch.equal(torch.rand(3), expected)


def test_gate_learns_to_route_to_the_right_expert() -> None:
    """Guards learning: when one expert is always right, the gate picks it and beats the others."""
    context, target, points = _cached(200)
    result = train_gate(context, target, points, TrainConfig(lr=0.05, epochs=8))
    final, first = result.history[-1], result.history[0]
    assert final.val_usage is not None and final.val_usage[1] == pytest.approx(1.0)
    assert final.val_mae is not None and first.val_mae is not None
    assert final.val_mae < first.val_mae or final.val_mae < 0.01
    assert result.expert_val_mae is not None
    assert final.val_mae < min(result.expert_val_mae[0], result.expert_val_mae[2])


def test_series_scale_does_not_change_the_gate() -> None:
    """Guards per-window scaling: data times 10^4 trains the same gate with the same losses."""
    context, target, points = _cached(80)
    small = train_gate(context, target, points, TrainConfig(epochs=2, lr=0.01))
    large = train_gate(1e4 * context, 1e4 * target, 1e4 * points, TrainConfig(epochs=2, lr=0.01))
    torch.testing.assert_close(
        small.gate.linear.weight, large.gate.linear.weight, rtol=1e-4, atol=1e-5
    )
    assert small.history[-1].val_loss == pytest.approx(large.history[-1].val_loss, rel=1e-3)


def test_validation_each_epoch_and_explicit_split() -> None:
    """Guards validation: metrics for every epoch; an explicit mask decides the held-out windows."""
    context, target, points = _cached(50)
    result = train_gate(context, target, points, TrainConfig(epochs=3, val_fraction=0.2))
    assert [e.epoch for e in result.history] == [1, 2, 3] and (result.n_train, result.n_val) == (
        40,
        10,
    )
    assert all(e.val_loss is not None and e.val_usage is not None for e in result.history)
    assert sum(result.history[-1].val_usage or []) == pytest.approx(2.0)
    mask = torch.zeros(50, dtype=torch.bool)
    mask[:7] = True
    explicit = train_gate(context, target, points, TrainConfig(epochs=1), validation_mask=mask)
    assert (explicit.n_train, explicit.n_val) == (43, 7)
    single = train_gate(context[:1], target[:1], points[:1], TrainConfig(epochs=1))
    assert single.n_val == 0 and single.history[0].val_loss is None


def test_fast_engine_matches_autograd() -> None:
    """Guards the hand-written gradients of the linear gate against autograd (with NaN targets)."""
    context, target, points = _cached(64)
    target[::5, 1] = float("nan")
    config = TrainConfig(epochs=2, lr=0.02, balance_weight=0.3)
    fast = train_gate(context, target, points, config, engine="auto")
    reference = train_gate(context, target, points, config, engine="autograd")
    torch.testing.assert_close(
        fast.gate.linear.weight, reference.gate.linear.weight, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        fast.gate.linear.bias, reference.gate.linear.bias, rtol=1e-5, atol=1e-6
    )
    assert all(e.val_loss is not None and e.val_loss == e.val_loss for e in fast.history)  # not NaN


@pytest.mark.parametrize("missing", [False, True])
def test_hand_written_gradient_equals_autograd(missing: bool) -> None:
    """Guards FastLinearTrainer.gradient: equal to autograd of Huber + balance loss, per batch."""
    context, target, points = _cached(16, seed=5)
    context, target, points = context / 5, target / 5, points / 5 + torch.randn(16, 3, 3)
    observed = torch.ones_like(target)
    if missing:
        observed[::3, 0] = 0.0
    torch.manual_seed(0)
    gate = LinearGate(6, 3)
    with torch.no_grad():
        gate.linear.weight.mul_(2)  # sharper, but not saturated: gradients stay large
    trainer = FastLinearTrainer(gate, context, target, observed, points, 1e-3, 0.5, 0.3)
    selection = select_top2(gate(context))
    mixture = mix(selection, points)
    losses = torch.nn.functional.huber_loss(mixture.point, target, reduction="none", delta=0.5)
    loss = (losses * observed).sum() / observed.sum()
    loss = loss + 0.3 * load_balancing_loss(selection.probs, selection.indices)
    loss.backward()
    assert gate.linear.weight.grad is not None and gate.linear.bias.grad is not None
    expected = torch.cat([gate.linear.weight.grad, gate.linear.bias.grad[:, None]], dim=1)
    ones = torch.ones(16, 1)
    actual = trainer.gradient(
        torch.cat([context, ones], dim=1), target, observed if missing else None, points
    )
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-7)


def test_missing_cached_forecast_is_a_clear_error() -> None:
    """Guards bad cache input: NaN forecasts are named, not trained on."""
    context, target, points = _cached(20)
    points[3, 2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf in 1 windows \(expert positions \[2\]\)"):
        train_gate(context, target, points)
    with pytest.raises(ValueError, match="no training windows"):
        train_gate(context[:0], target[:0], points[:0])
    with pytest.raises(ValueError, match=r"points must have shape \(N=20, E, H=3\)"):
        train_gate(context, target, points[:, :, :2])


def test_balance_loss_is_one_when_uniform_and_more_when_collapsed() -> None:
    """Guards the auxiliary loss's scale: 1.0 at uniform load, larger when one pair takes all."""
    uniform = torch.full((6, 3), 1 / 3)
    spread = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [1, 2], [2, 0]])
    assert float(load_balancing_loss(uniform, spread)) == pytest.approx(1.0)
    collapsed = torch.tensor([[0.6, 0.4, 0.0]]).expand(6, 3)
    assert float(load_balancing_loss(collapsed, torch.tensor([[0, 1]] * 6))) > 1.4


def test_balance_loss_keeps_the_contextual_gate_from_collapsing() -> None:
    """Guards the contextual gate's load balancing: it spreads the load the plain loss collapses."""
    context, target, points = _cached(160)
    base = TrainConfig(gate="contextual", lr=0.02, epochs=4, gate_width=8, gate_heads=2)
    plain = train_gate(context, target, points, base.model_copy(update={"balance_weight": 0.0}))
    balanced = train_gate(context, target, points, base.model_copy(update={"balance_weight": 3.0}))
    plain_usage = plain.history[-1].val_usage or []
    balanced_usage = balanced.history[-1].val_usage or []
    assert min(plain_usage) == 0.0  # collapsed onto one pair of experts
    assert min(balanced_usage) > 0.25
    last_mae, first_mae = plain.history[-1].val_mae, plain.history[0].val_mae
    assert last_mae is not None and first_mae is not None and last_mae < first_mae + 1e-6


class _ModuleExpert(nn.Module):
    """An expert that owns trainable-looking parameters, to prove training leaves them alone."""

    name = "module_expert"
    capabilities = ExpertCapabilities(None, 1, None, (), True)

    def __init__(self, input_length: int, horizon: int) -> None:
        super().__init__()
        self.net = nn.Linear(input_length, horizon)

    @property
    def cache_key(self) -> str:
        return "module_expert"

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        return ExpertForecast(point=self.net(context), quantiles=None)


def test_only_the_gate_is_optimised() -> None:
    """Guards 'only the gate's parameters are optimised': an expert's weights stay bit-identical."""
    context, target = synthetic_windows(32, 6, 3, seed=2)
    module_expert = _ModuleExpert(6, 3)
    before = {k: v.clone() for k, v in module_expert.state_dict().items()}
    experts: list[Expert] = [fake_trio()[0], module_expert]
    result = train_gate_live(context, target, experts, TrainConfig(epochs=2, lr=0.1))
    for key, value in module_expert.state_dict().items():
        assert torch.equal(value, before[key])
    assert set(result.gate.state_dict()) == {"linear.weight", "linear.bias"}


def test_best_pair_is_the_pair_with_the_lowest_average_error() -> None:
    """Guards best_pair: averages pairs, ignores NaN targets, and needs two experts."""
    target = torch.zeros(4, 3)
    points = torch.stack(
        [torch.full((4, 3), 1.0), torch.full((4, 3), -1.0), torch.full((4, 3), 0.5)], dim=1
    )  # pair (0, 1) averages to the target exactly; (1, 2) is off by 0.25
    assert best_pair(points, target) == (0, 1)
    target[:, 0] = float("nan")
    assert best_pair(points, target) == (0, 1)
    with pytest.raises(ValueError, match="at least two experts"):
        best_pair(points[:, :1], target)


@pytest.mark.parametrize("kind", ["linear", "contextual"])
def test_best_pair_start_routes_every_window_to_that_pair(kind: str) -> None:
    """Guards init='best_pair': before training the gate is the constant router to the pair
    that is best on the training rows (never chosen by looking at validation rows)."""
    context, _, points = _cached(60)
    target = (points[:, 0] + points[:, 2]) / 2  # the (0, 2) average is exact on training rows
    validation = torch.zeros(60, dtype=torch.bool)
    validation[:20] = True
    target[:20] = points[:20, 1]  # validation rows favour expert 1 alone: must not leak
    config = TrainConfig(gate=kind, init="best_pair", epochs=0)  # type: ignore[arg-type]
    result = train_gate(context, target, points, config, validation_mask=validation)
    assert result.start_pair == (0, 2) and result.history == []
    assert result.initial is not None and result.initial.val_usage == pytest.approx([1, 0, 1])
    with torch.no_grad():
        logits = result.gate(scale_context(context, window_scale(context)), points)
    selection = select_top2(logits)
    assert torch.equal(selection.indices.sort(dim=1).values, torch.tensor([[0, 2]]).expand(60, 2))
    torch.testing.assert_close(selection.weights, torch.full((60, 2), 0.5))


def test_best_pair_start_still_learns_and_keeps_the_engines_equal() -> None:
    """Guards training from the pair start: the fast engine matches autograd, and the gate
    moves off the start pair when another expert is always right."""
    context, target, points = _cached(120)  # expert 1 is always right
    config = TrainConfig(init="best_pair", epochs=6, lr=0.05)
    fast = train_gate(context, target, points, config, engine="auto")
    reference = train_gate(context, target, points, config, engine="autograd")
    torch.testing.assert_close(
        fast.gate.linear.weight, reference.gate.linear.weight, rtol=1e-5, atol=1e-6
    )
    assert fast.start_pair is not None and 1 in fast.start_pair
    assert fast.initial is not None and fast.initial.val_mae is not None
    final = fast.history[-1]
    assert final.val_mae is not None and final.val_mae < fast.initial.val_mae


def test_keep_best_epoch_returns_the_epoch_with_the_lowest_validation_error() -> None:
    """Guards early stopping: the returned gate is the best validation epoch's (0 = start)."""
    context, target, points = _cached(80)
    config = TrainConfig(init="best_pair", epochs=6, lr=0.5, keep_best_epoch=True)  # jumpy
    result = train_gate(context, target, points, config)
    scores = [result.initial] + result.history
    best = min(scores, key=lambda e: e.val_mae if e and e.val_mae is not None else float("inf"))
    assert best is not None and result.chosen_epoch == best.epoch < config.epochs
    rerun = train_gate(
        context,
        target,
        points,
        config.model_copy(update={"epochs": best.epoch, "keep_best_epoch": False}),
    )
    for key, value in result.gate.state_dict().items():
        torch.testing.assert_close(value, rerun.gate.state_dict()[key])


def test_seasonal_naive_scale_is_the_mase_denominator_with_fallbacks() -> None:
    """Guards the MASE loss scale: lag-m changes, then lag 1, then mean |x|; never 0 or NaN."""
    seasonal = torch.tensor([[1.0, 2.0, 4.0, 3.0, float("nan"), 7.0]])  # lag 2: |3|, |1|, |4|
    torch.testing.assert_close(seasonal_naive_scale(seasonal, 2), torch.tensor([[8.0 / 3]]))
    short = torch.tensor([[float("nan"), 1.0, 3.0]])  # no observed lag-12 pair: lag 1
    torch.testing.assert_close(seasonal_naive_scale(short, 12), torch.tensor([[2.0]]))
    flat = torch.tensor([[5.0, 5.0, 5.0]])  # no change at all: mean |x|
    torch.testing.assert_close(seasonal_naive_scale(flat, 1), torch.tensor([[5.0]]))
    empty = torch.full((1, 3), float("nan"))
    assert seasonal_naive_scale(empty, 1).item() == 1.0
    with pytest.raises(ValueError, match="season_length"):
        seasonal_naive_scale(flat, 0)


def test_seasonal_naive_loss_is_measured_in_mase_units() -> None:
    """Guards loss_scale='seasonal_naive': validation MAE equals the windows' in-context MASE,
    the gate is unchanged by the series' scale, and both engines still agree."""
    context, target, points = _cached(60)
    config = TrainConfig(init="best_pair", epochs=0, loss_scale="seasonal_naive", season_length=2)
    validation = torch.zeros(60, dtype=torch.bool)
    validation[:15] = True
    result = train_gate(context, target, points, config, validation_mask=validation)
    assert result.start_pair is not None and result.initial is not None
    pair = list(result.start_pair)
    rows = validation.nonzero().squeeze(1)
    errors = (points[rows][:, pair].mean(dim=1) - target[rows]).abs()
    errors = errors / seasonal_naive_scale(context[rows], 2)
    assert result.initial.val_mae == pytest.approx(float(errors.mean()), rel=1e-5)
    trained = config.model_copy(update={"epochs": 3, "lr": 0.05})
    fast = train_gate(context, target, points, trained, validation_mask=validation)
    large = train_gate(
        1e4 * context, 1e4 * target, 1e4 * points, trained, validation_mask=validation
    )
    reference = train_gate(
        context, target, points, trained, validation_mask=validation, engine="autograd"
    )
    for other in (large, reference):
        torch.testing.assert_close(
            fast.gate.linear.weight, other.gate.linear.weight, rtol=1e-4, atol=1e-5
        )
