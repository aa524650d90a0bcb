"""Properties of top-2 routing that hold for any weights (random init, no training)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moe.experts.base import Expert
from moe.experts.fake import fake_trio
from moe.gates import GateKind
from moe.router import MoERouter, Routing, mix, replay_top2, run_experts, select_top2
from moe.scaling import scale_context, scale_forecasts, window_scale
from moe.training import TrainConfig, train_gate, train_gate_live
from tests.gate.helpers import recording_trio, synthetic_windows

FAST = settings(max_examples=40, deadline=None)


def _logits_and_points(
    seed: int, rows: int, experts: int, horizon: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, experts, generator=generator)
    points = 100 * torch.randn(rows, experts, horizon, generator=generator)
    return logits, points


def _router(
    experts: Sequence[Expert], gate: GateKind = "linear", seed: int = 0, input_length: int = 6
) -> MoERouter:
    torch.manual_seed(seed)
    return MoERouter(input_length, 3, "cpu", experts=experts, gate=gate)


@FAST
@given(seed=st.integers(0, 10**6), rows=st.integers(1, 20), experts=st.integers(2, 6))
def test_weights_sum_to_one_over_two_distinct_experts(seed: int, rows: int, experts: int) -> None:
    """Guards the seed's rule: softmax, top-2, weights renormalised to sum to one."""
    logits, _ = _logits_and_points(seed, rows, experts, 1)
    selection = select_top2(logits)
    assert selection.indices.shape == (rows, 2) and selection.weights.shape == (rows, 2)
    torch.testing.assert_close(selection.weights.sum(dim=1), torch.ones(rows))
    assert (selection.indices[:, 0] != selection.indices[:, 1]).all()
    assert (selection.weights >= 0).all() and (
        selection.weights[:, 0] >= selection.weights[:, 1]
    ).all()
    best_two = logits.argsort(dim=1, descending=True)[:, :2]
    assert torch.equal(selection.indices.sort(dim=1).values, best_two.sort(dim=1).values)


@FAST
@given(
    seed=st.integers(0, 10**6),
    rows=st.integers(1, 20),
    experts=st.integers(2, 6),
    horizon=st.integers(1, 5),
)
def test_mixture_lies_within_its_two_experts(
    seed: int, rows: int, experts: int, horizon: int
) -> None:
    """Guards the convex mix: each point lies between the two chosen experts' values."""
    logits, points = _logits_and_points(seed, rows, experts, horizon)
    mixture = replay_top2(logits, points)
    chosen = points.gather(1, mixture.selection.indices[:, :, None].expand(-1, -1, horizon))
    assert torch.equal(chosen, mixture.chosen)
    low, high = chosen.min(dim=1).values, chosen.max(dim=1).values
    tolerance = 1e-5 * (1 + points.abs().max())
    assert (mixture.point >= low - tolerance).all() and (mixture.point <= high + tolerance).all()


def test_unchosen_experts_are_never_read() -> None:
    """Guards sparse dispatch: NaN in experts that were not chosen cannot leak into the mix."""
    logits, points = _logits_and_points(1, 16, 4, 3)
    selection = select_top2(logits)
    sparse = torch.full_like(points, float("nan"))
    rows = torch.arange(16)[:, None]
    sparse[rows, selection.indices] = points[rows, selection.indices]
    torch.testing.assert_close(mix(selection, sparse).point, mix(selection, points).point)


def test_quantiles_mix_nan_aware() -> None:
    """Guards quantile mixing: a level one expert lacks takes the other's; NaN if both lack it."""
    logits = torch.tensor([[2.0, 1.0, -5.0]])
    quantiles = torch.arange(3 * 2 * 3, dtype=torch.float32).reshape(1, 3, 2, 3)  # (1, E, H, Q)
    quantiles[0, 1, :, 0] = float("nan")  # second expert lacks level 0
    quantiles[0, :2, :, 2] = float("nan")  # both chosen experts lack level 2
    points = quantiles[..., 1].clone()
    mixture = replay_top2(logits, points, quantiles)
    assert mixture.quantiles is not None
    weights = mixture.selection.weights[0]
    assert mixture.selection.indices.tolist() == [[0, 1]]
    torch.testing.assert_close(mixture.quantiles[0, :, 0], quantiles[0, 0, :, 0])
    expected_mid = weights[0] * quantiles[0, 0, :, 1] + weights[1] * quantiles[0, 1, :, 1]
    torch.testing.assert_close(mixture.quantiles[0, :, 1], expected_mid)
    assert torch.isnan(mixture.quantiles[0, :, 2]).all()


@pytest.mark.parametrize("gate", ["linear", "contextual"])
def test_permuting_experts_leaves_the_forecast_unchanged(gate: GateKind) -> None:
    """Guards order independence: reordering experts (and the gate's rows) changes nothing."""
    context, _ = synthetic_windows(12, 6, 3, seed=3)
    router = _router(fake_trio(), gate)
    reference = router.route(context)
    for order in itertools.permutations(range(3)):
        experts = [fake_trio()[i] for i in order]
        twin = _router(experts, gate, seed=99)
        twin.gating = router.gating.permuted(order)
        output = twin.route(context)
        torch.testing.assert_close(output.point, reference.point, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(output.quantiles, reference.quantiles, rtol=1e-5, atol=1e-5)
        names = [
            [output.routing.expert_keys[i] for i in row] for row in output.routing.indices.tolist()
        ]
        expected = [
            [reference.routing.expert_keys[i] for i in row]
            for row in reference.routing.indices.tolist()
        ]
        assert names == expected


def test_linear_router_runs_only_the_chosen_experts_once_per_batch() -> None:
    """Guards sparse inference: each expert runs at most once, on exactly the rows that chose it."""
    context, _ = synthetic_windows(40, 6, 3, seed=4)
    experts = recording_trio()
    output = _router(experts).route(context)
    indices = output.routing.indices
    assert sum(expert.calls for expert in experts) == 2 * 40  # exactly two experts per row
    for position, expert in enumerate(experts):
        rows = (indices == position).any(dim=1)
        if rows.any():
            assert len(expert.batches) == 1
            assert torch.equal(expert.batches[0], context[rows])
        else:
            assert expert.batches == []


def test_router_equals_replay_on_dense_forecasts() -> None:
    """Guards the single mixing path: router output == replay_top2 over all experts' forecasts."""
    context, _ = synthetic_windows(25, 6, 3, seed=5)
    router = _router(fake_trio())
    points, quantiles = run_experts(fake_trio(), context, 3)
    scale = window_scale(context)
    with torch.no_grad():
        expected = replay_top2(
            router.gating(scale_context(context, scale), None), points, quantiles
        )
        output = router.route(context)
    torch.testing.assert_close(output.point, expected.point)
    torch.testing.assert_close(output.quantiles, expected.quantiles)
    assert scale_forecasts(points, scale).shape == points.shape


def test_verbose_prints_and_returns_the_choice(capsys: pytest.CaptureFixture[str]) -> None:
    """Guards router(x, verbose=True): prints one line per row and returns a storable Routing."""
    context, _ = synthetic_windows(3, 6, 3, seed=6)
    router = _router(fake_trio())
    forecast, routing = router(context, verbose=True)
    assert forecast.shape == (3, 3) and isinstance(routing, Routing)
    records = routing.records()
    assert len(records) == 6 and {r["rank"] for r in records} == {1, 2}
    assert all(r["expert"] in ("moirai", "timemoe", "timesfm") for r in records)
    for row in range(3):
        assert sum(r["weight"] for r in records if r["row"] == row) == pytest.approx(1.0)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and printed[0].startswith("row 0:")
    assert torch.equal(router(context), forecast)


def test_router_rejects_wrong_input_shape() -> None:
    """Guards the boundary check: a wrong context length is named with expected and actual shape."""
    router = _router(fake_trio())
    with pytest.raises(ValueError, match=r"\(B, 6\), got \(2, 5\)"):
        router(torch.zeros(2, 5))


@pytest.mark.parametrize("gate", ["linear", "contextual"])
def test_cache_training_equals_live_training(gate: GateKind) -> None:
    """Guards 'the cache is a pure speed-up': training on the cache == running experts live."""
    context, target = synthetic_windows(40, 6, 3, seed=7)
    config = TrainConfig(
        epochs=2, batch_size=8, lr=0.05, seed=11, gate=gate, gate_width=8, gate_heads=2
    )
    points, _ = run_experts(fake_trio(), context, 3)
    cached = train_gate(context, target, points, config)
    live_experts = recording_trio()
    live = train_gate_live(context, target, live_experts, config)
    for (name, cached_value), (_, live_value) in zip(
        cached.gate.state_dict().items(), live.gate.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(cached_value, live_value, rtol=1e-5, atol=1e-6, msg=name)
    for cached_epoch, live_epoch in zip(cached.history, live.history, strict=True):
        assert cached_epoch.train_loss == pytest.approx(live_epoch.train_loss, rel=1e-4)
        assert cached_epoch.val_loss == pytest.approx(live_epoch.val_loss, rel=1e-4)
        assert cached_epoch.val_usage == live_epoch.val_usage
    assert all(expert.calls > 0 for expert in live_experts)  # live really ran the experts
