"""The feature-pair gate, its pair loss, past-error history and the validated selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moe.artifact import load_artifact, save_artifact
from moe.constant_pair import best_constant_pair
from moe.feature_gate import FeaturePairGate, forecast_inputs, past_expert_mase
from moe.model_file import build_artifact, load_router
from moe.selection import _fold_masks, candidate_configs, fit_gate
from moe.training import TrainConfig, train_gate
from tests.gate.helpers import RecordingExpert

L, H, E = 48, 6, 4


def _routing_problem(
    n_series: int = 120, signal: bool = True, seed: int = 0
) -> dict[str, torch.Tensor | np.ndarray]:
    """Seasonal and trending series; experts 0+1 are good on seasonal windows, 2+3 on trends.

    Without ``signal`` experts 1+2 are best on every window (a constant pair wins).
    Three windows per series (origins 0, H, 2H after the first context); the newest
    validates.
    """
    rng = np.random.default_rng(seed)
    contexts, targets, points, series, origins, kinds = [], [], [], [], [], []
    for index in range(n_series):
        seasonal = index % 2 == 0
        t = np.arange(L + 3 * H)
        if seasonal:
            values = 50 + 10 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.5, t.size)
        else:
            values = 50 + 0.8 * t + rng.normal(0, 0.5, t.size)
        for rank in range(3):
            start = rank * H
            target = values[start + L : start + L + H]
            good = (0, 1) if seasonal else (2, 3)
            if not signal:
                good = (1, 2)
            noise = np.array([1.0 if e in good else 6.0 for e in range(E)])
            signs = rng.choice([-1.0, 1.0], size=(E, 1))
            forecast = target[None, :] + signs * noise[:, None] * rng.uniform(0.5, 1.5, (E, H))
            contexts.append(values[start : start + L])
            targets.append(target)
            points.append(forecast)
            series.append(index)
            origins.append(start + L)
            kinds.append(seasonal)
    origin = np.asarray(origins)
    series_index = np.asarray(series)
    newest = origin == origin.max()
    return {
        "context": torch.tensor(np.stack(contexts), dtype=torch.float32),
        "target": torch.tensor(np.stack(targets), dtype=torch.float32),
        "points": torch.tensor(np.stack(points), dtype=torch.float32),
        "series_index": series_index,
        "origin": origin,
        "validation": torch.from_numpy(newest),
        "seasonal": np.asarray(kinds),
    }


def _fit(problem: dict[str, torch.Tensor | np.ndarray], **kwargs: object):  # type: ignore[no-untyped-def]
    return fit_gate(
        problem["context"],  # type: ignore[arg-type]
        problem["target"],  # type: ignore[arg-type]
        problem["points"],  # type: ignore[arg-type]
        validation_mask=problem["validation"],  # type: ignore[arg-type]
        season_length=12,
        **kwargs,  # type: ignore[arg-type]
    )


def test_selection_picks_the_feature_gate_when_features_predict_the_pair() -> None:
    """Guards the feature-pair gate and the one-SE rule: per-series routing wins when it pays."""
    problem = _routing_problem(n_series=80)
    fit = _fit(problem, kinds=("pair", "linear", "feature_pair"))
    assert fit.chosen.family == "feature_pair"
    pair = next(c for c in fit.candidates if c.family == "pair")
    assert (
        fit.chosen.mean < pair.mean - 2 * float((fit.chosen.errors - pair.errors).std()) / 40**0.5
    )
    gate = fit.result.gate
    rows = problem["validation"]
    logits = gate(problem["context"][rows])  # type: ignore[index]
    chosen = set_of_top2(logits)
    seasonal = problem["seasonal"][rows.numpy()]  # type: ignore[union-attr, index]
    right = [c == ({0, 1} if s else {2, 3}) for c, s in zip(chosen, seasonal, strict=True)]
    assert np.mean(right) > 0.9


def set_of_top2(logits: torch.Tensor) -> list[set[int]]:
    return [set(row) for row in logits.topk(2, dim=1).indices.tolist()]


def test_selection_keeps_the_constant_pair_without_signal() -> None:
    """Guards the one-SE rule: when one pair is best everywhere, the simplest candidate wins."""
    fit = _fit(_routing_problem(signal=False))
    assert fit.chosen.family == "pair"
    assert fit.result.start_pair == (1, 2)
    assert {"chosen", "candidates", "rule"} <= set(fit.summary())


def test_time_budget_keeps_the_pair_and_skips_the_rest() -> None:
    """Guards the time budget: with no time left only the first (simplest) candidate runs."""
    fit = _fit(_routing_problem(n_series=20), time_budget_s=0.0)
    assert [c.family for c in fit.candidates] == ["pair"] and fit.skipped


def test_feature_gate_artifact_round_trip_and_sparse_inference(tmp_path: Path) -> None:
    """Guards the artifact path: weights_only load, same routing, only the chosen pair runs."""
    problem = _routing_problem(n_series=40)
    config = TrainConfig(
        gate="feature_pair", epochs=20, batch_size=32, lr=1e-2, season_length=12,
        pair_weights="learned",
    )  # fmt: skip
    result = train_gate(
        problem["context"],  # type: ignore[arg-type]
        problem["target"],  # type: ignore[arg-type]
        problem["points"],  # type: ignore[arg-type]
        config,
        validation_mask=problem["validation"],  # type: ignore[arg-type]
    )
    experts = [RecordingExpert(f"e{i}", 1.0 + 0.1 * i) for i in range(E)]
    context, target, points = problem["context"], problem["target"], problem["points"]
    artifact = build_artifact(result, experts, context, target, points)  # type: ignore[arg-type]
    path = save_artifact(artifact, tmp_path / "model.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["gate"]["kind"] == "feature_pair" and raw["gate"]["learned_weights"] is True
    loaded = load_artifact(path)
    router = load_router(loaded, experts=experts)
    batch = context[:8]  # type: ignore[index]
    expected = result.gate(batch).topk(2, dim=1).indices
    output = router.route(batch)
    assert torch.equal(output.routing.indices, expected)
    for index, expert in enumerate(experts):
        rows_used = int((expected == index).any(dim=1).sum())
        assert sum(b.shape[0] for b in expert.batches) == rows_used
    weights = output.routing.weights
    assert torch.allclose(weights.sum(dim=1), torch.ones(8)) and (weights > 0).all()


@pytest.mark.parametrize(("members", "use_forecasts"), [(1, False), (3, False), (1, True)])
def test_permuted_gate_routes_to_the_same_experts(members: int, use_forecasts: bool) -> None:
    """Guards FeaturePairGate.permuted: reordering experts reorders logits, routing is unchanged."""
    torch.manual_seed(0)
    gate = FeaturePairGate(
        L, H, E, use_history=True, learned_weights=True, members=members,
        use_forecasts=use_forecasts,
    ).eval()  # fmt: skip
    with torch.no_grad():  # non-trivial standardisation, so a wrong column order shows
        gate.input_mean.normal_()
        gate.input_std.uniform_(0.5, 2.0)
    problem = _routing_problem(n_series=10)
    context = problem["context"]
    history = torch.rand(context.shape[0], E)  # type: ignore[union-attr]
    forecasts = problem["points"] if use_forecasts else None
    order = [2, 0, 3, 1]
    twin = gate.permuted(order)
    with torch.no_grad():
        original = gate(context, forecasts, history)  # type: ignore[arg-type]
        moved = None if forecasts is None else forecasts[:, order]  # type: ignore[index]
        permuted = twin(context, moved, history[:, order])  # type: ignore[arg-type]
    assert torch.allclose(original[:, order], permuted, atol=1e-4)


def test_forecast_inputs_are_scale_free_and_follow_the_experts() -> None:
    """Guards forecast_inputs: any per-row scale gives the same inputs; the outlier stands out."""
    torch.manual_seed(0)
    forecasts = 10 + torch.randn(6, E, H)
    forecasts[:, 3] += 5.0  # expert 3 far from the median
    inputs = forecast_inputs(forecasts)
    scaled = forecast_inputs(forecasts * torch.rand(6, 1, 1).add(0.1)[:, :, :] * 100)
    assert inputs.shape == (6, E + 1)
    assert torch.allclose(inputs, scaled, atol=1e-4)
    assert (inputs[:, :E].argmax(dim=1) == 3).all()
    with pytest.raises(ValueError, match="forecasts"):
        FeaturePairGate(L, H, E, use_forecasts=True).raw_inputs(forecasts[:, 0])


def test_past_expert_mase_uses_only_strictly_older_windows() -> None:
    """Guards against leakage: a window's history never reads its own or overlapping targets."""
    points = torch.tensor([[[1.0, 1.0]], [[2.0, 2.0]], [[4.0, 4.0]], [[8.0, 8.0]]])  # (4, 1, 2)
    target = torch.zeros(4, 2)
    scale = torch.ones(4)
    series = np.array([0, 0, 0, 1])
    origin = np.array([10, 12, 11, 12])  # window 2 overlaps window 1's target (11 + 2 > 12)
    history = past_expert_mase(points, target, scale, series, origin)
    assert torch.isnan(history[0]).all()  # the oldest window has no history
    assert history[1].item() == 1.0  # only window 0 (ends at 12 <= 12), not window 2
    assert history[2].isnan().all()  # window 0 ends at 12 > 11: overlaps, left out
    assert history[3].isnan().all()  # other series never count
    target[1] = 100.0  # a window's own target never changes its history
    assert torch.equal(past_expert_mase(points, target, scale, series, origin)[1], history[1])


def test_feature_candidates_are_skipped_when_their_features_would_overrun_the_budget() -> None:
    """Guards the budget on big stores: features (~2 ms a window) are not started past it."""
    fit = _fit(_routing_problem(n_series=120), kinds=("pair", "feature_pair"), time_budget_s=0.6)
    assert [c.family for c in fit.candidates] == ["pair"]
    assert fit.skipped and all(name.startswith("feature_pair") for name in fit.skipped)


def test_ensemble_members_are_independent_and_averaged() -> None:
    """Guards the seed ensemble: member k sees only its own units; the gate averages softmaxes."""
    torch.manual_seed(0)
    gate = FeaturePairGate(L, H, E, learned_weights=True, members=3).eval()
    inputs = torch.randn(5, gate.n_inputs)
    scores, weights = gate.member_outputs(inputs)  # (5, 3, P)
    last = gate.net[-1]
    with torch.no_grad():  # a change to member 0's output weights leaves members 1, 2 alone
        last.weight[: gate.n_outputs] += 1.0  # type: ignore[index, operator]
        moved, _ = gate.member_outputs(inputs)
        assert torch.equal(moved[:, 1:], scores[:, 1:]) and not torch.equal(moved, scores)
        last.weight[: gate.n_outputs] -= 1.0  # type: ignore[index, operator]
        pair_scores, pair_weights = gate.pair_outputs(inputs)
    expected = torch.log(torch.softmax(scores, dim=2).mean(dim=1))
    assert torch.allclose(pair_scores, expected, atol=1e-5)
    assert torch.allclose(pair_weights, weights.mean(dim=1))


def test_ensemble_gate_artifact_round_trip(tmp_path: Path) -> None:
    """Guards the artifact path of a seed ensemble: members survive save/load, same routing."""
    problem = _routing_problem(n_series=40)
    config = TrainConfig(
        gate="feature_pair", epochs=10, batch_size=32, lr=1e-2, season_length=12,
        pair_weights="learned", pair_members=3,
    )  # fmt: skip
    context, target, points = problem["context"], problem["target"], problem["points"]
    result = train_gate(
        context,  # type: ignore[arg-type]
        target,  # type: ignore[arg-type]
        points,  # type: ignore[arg-type]
        config,
        validation_mask=problem["validation"],  # type: ignore[arg-type]
    )
    experts = [RecordingExpert(f"e{i}", 1.0 + 0.1 * i) for i in range(E)]
    artifact = build_artifact(result, experts, context, target, points)  # type: ignore[arg-type]
    path = save_artifact(artifact, tmp_path / "model.pt")
    assert torch.load(path, weights_only=True)["gate"]["members"] == 3
    router = load_router(load_artifact(path), experts=experts)
    batch = context[:8]  # type: ignore[index]
    expected = result.gate(batch).topk(2, dim=1).indices
    assert torch.equal(router.route(batch).routing.indices, expected)


def test_linear_candidates_start_at_every_pair_unless_asked() -> None:
    """Guards the grid: linear starts at every pair by default, only the training pair on ask."""
    every = candidate_configs(("linear",), 12, 0, False, E)
    assert len(every) == 4 * (1 + E * (E - 1) // 2)
    best = candidate_configs(("linear",), 12, 0, False, E, linear_starts="best")
    assert len(best) == 4 and all(c.start_pair is None for _, _, c in best)
    with pytest.raises(ValueError, match="linear_starts"):
        candidate_configs(("linear",), 12, 0, False, E, linear_starts="some")


def test_validation_folds_hold_out_each_series_next_older_windows() -> None:
    """Guards window-rank folds: fold k is each validated series' k-th older window."""
    problem = _routing_problem(n_series=10)
    series, origin = problem["series_index"], problem["origin"]
    validation = problem["validation"]
    masks = _fold_masks(validation, 3, series, origin)  # type: ignore[arg-type]
    assert len(masks) == 3 and torch.equal(masks[0], validation)
    for k, mask in enumerate(masks):
        rows = mask.numpy()
        assert sorted(series[rows]) == list(range(10))  # type: ignore[index]
        assert set(origin[rows]) == {origin.max() - k * H}  # type: ignore[union-attr, index]
    # A series without a validation window gives no fold rows; folds past the oldest vanish.
    unvalidated = validation.clone()
    unvalidated[series == 0] = False  # type: ignore[index]
    masks = _fold_masks(unvalidated, 5, series, origin)  # type: ignore[arg-type]
    assert len(masks) == 3 and not any(m[series == 0].any() for m in masks)  # type: ignore[index]
    with pytest.raises(ValueError, match="series_index and origin"):
        _fold_masks(validation, 2, None, None)


def test_folded_scores_are_per_series_means_of_fits_that_held_each_fold_out() -> None:
    """Guards the folded score: fold 1's errors come from a fit trained without fold 1."""
    problem = _routing_problem(n_series=30)
    series, origin = problem["series_index"], problem["origin"]
    kinds = ("pair", "feature_pair")
    folded = _fit(problem, kinds=kinds, folds=2, series_index=series, origin=origin)
    newest = _fit(problem, kinds=kinds)
    older = torch.from_numpy(origin == origin.max() - H)  # type: ignore[operator]
    second = _fit({**problem, "validation": older}, kinds=kinds)
    assert folded.folds == 2 and folded.summary()["n_validation_windows"] == 60
    for both, one, two in zip(folded.candidates, newest.candidates, second.candidates, strict=True):
        assert both.name == one.name == two.name
        torch.testing.assert_close(both.errors, (one.errors + two.errors) / 2)
    # The gate returned is fold 0's fit, the same as the one-fold selection's.
    chosen = next(c for c in newest.candidates if c.name == folded.chosen.name)
    assert folded.result.start_pair == chosen.result.start_pair
    for a, b in zip(folded.result.gate.parameters(), chosen.result.gate.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_chosen_constant_pair_is_chosen_again_on_every_window() -> None:
    """Guards the pair candidate: validated on the older windows, but once chosen its pair
    and weight come from every window (the retrain's promotion fallback picks the same)."""
    problem = _routing_problem(n_series=40, signal=False)
    points = problem["points"].clone()  # type: ignore[union-attr]
    newest = problem["validation"].numpy()  # type: ignore[union-attr]
    points[newest, 1] = problem["target"][newest]  # type: ignore[index]  # expert 1 exact there
    fit = _fit({**problem, "points": points}, kinds=("pair",))
    assert fit.chosen.family == "pair"
    everywhere = best_constant_pair(
        points.numpy(),
        problem["target"].numpy(),  # type: ignore[union-attr]
        problem["context"].numpy(),  # type: ignore[union-attr]
        12,
    )
    older = best_constant_pair(
        points.numpy()[~newest],
        problem["target"].numpy()[~newest],  # type: ignore[union-attr]
        problem["context"].numpy()[~newest],  # type: ignore[union-attr]
        12,
    )
    assert (everywhere.first, everywhere.weight) != (older.first, older.weight)
    assert fit.result.start_pair == (everywhere.first, everywhere.second)
    logits = fit.result.gate(torch.zeros(3, L))
    weights = torch.softmax(logits, dim=1)[0]
    top = weights.topk(2)
    assert top.indices.tolist() == [everywhere.first, everywhere.second]
    torch.testing.assert_close(
        top.values[0] / top.values.sum(), torch.tensor(everywhere.weight), atol=1e-4, rtol=0
    )
