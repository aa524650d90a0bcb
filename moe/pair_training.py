"""Training the feature-pair gate with FFORMA's loss over expert pairs.

For window ``n`` and pair ``p = (i, j)`` the mixture ``w f_i + (1 - w) f_j`` (``w = 0.5``
unless the gate learns it) has the error ``err[n, p]`` in MASE units (mean absolute error
over the observed target points divided by the window's MASE scale). The loss is the
expected error under a softmax over the pairs, ``mean_n sum_p softmax(s_n)_p err[n, p]``:
smooth in the scores, and minimal when each window's mass sits on its best pair. Adam on
mini-batches; with ``keep_best_epoch`` the epoch with the lowest validation error of the
*chosen* (argmax) pair is kept (epoch 0 = the untrained gate is never a candidate: its
choice is arbitrary).

Shapes: ``context`` ``(N, L)`` raw (NaN = missing), ``target`` ``(N, H)``, ``points``
``(N, E, H)``, ``mase_scale`` ``(N,)``, ``history`` ``(N, E)`` (NaN = none),
``season_lengths`` ``(N,)`` ints (features' season), ``inputs`` ``(N, F')`` precomputed
gate inputs (``FeaturePairGate.raw_inputs``) to share across a grid.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from moe.feature_gate import FeaturePairGate
from moe.training import EpochMetrics, TrainConfig, TrainResult, _cpu_threads

__all__ = ["pair_errors", "train_pair_gate", "build_pair_gate"]


def pair_errors(
    points: torch.Tensor,
    target: torch.Tensor,
    mase_scale: torch.Tensor,
    pairs: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MASE of each pair's mixture on each window: ``(N, P)``.

    ``pairs`` ``(P, 2)`` expert indices; ``weights`` ``(N, P)`` of the first expert (None:
    0.5). NaN targets are left out; a window without observed target scores 0 everywhere.
    """
    first = points[:, pairs[:, 0]]  # (N, P, H)
    second = points[:, pairs[:, 1]]
    w = torch.full(first.shape[:2], 0.5, dtype=points.dtype) if weights is None else weights
    mixed = w[:, :, None] * first + (1 - w[:, :, None]) * second  # (N, P, H)
    observed = ~torch.isnan(target)  # (N, H)
    errors = (mixed - target.nan_to_num(0.0)[:, None, :]).abs() * observed[:, None, :]
    counts = observed.sum(dim=1, keepdim=True).clamp_min(1)  # (N, 1)
    return errors.sum(dim=2) / counts / mase_scale.reshape(-1, 1)


def build_pair_gate(
    input_length: int, pred_length: int, n_experts: int, config: TrainConfig
) -> FeaturePairGate:
    """A fresh feature-pair gate with ``config``'s settings (seeded init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return FeaturePairGate(
            input_length,
            pred_length,
            n_experts,
            season_length=config.season_length,
            hidden=config.pair_hidden,
            use_history=config.use_history,
            learned_weights=config.pair_weights == "learned",
        )


def _chosen_errors(
    gate: FeaturePairGate,
    inputs: torch.Tensor,
    points: torch.Tensor,
    target: torch.Tensor,
    mase_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window MASE of the argmax pair ``(n,)`` and the chosen pair index ``(n,)``."""
    with torch.no_grad():
        scores, weights = gate.pair_outputs(inputs)
        errors = pair_errors(points, target, mase_scale, gate.pair_index, weights)  # (n, P)
        best = scores.argmax(dim=1)
        return errors.gather(1, best[:, None]).squeeze(1), best


def train_pair_gate(*args: Any, **kwargs: Any) -> TrainResult:
    """Train a ``FeaturePairGate`` (``_train_pair_gate``) with one CPU thread: each step is a
    few tiny kernels, and OpenMP hand-offs on a busy CPU made them 10-100x slower."""
    with _cpu_threads(1):
        return _train_pair_gate(*args, **kwargs)


def _train_pair_gate(
    context: torch.Tensor,
    target: torch.Tensor,
    points: torch.Tensor,
    config: TrainConfig,
    *,
    validation_mask: torch.Tensor | None,
    mase_scale: torch.Tensor,
    history: torch.Tensor | None = None,
    season_lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
) -> TrainResult:
    """Train a ``FeaturePairGate`` on cached forecasts (module docstring for the loss)."""
    n_windows, n_experts, horizon = points.shape
    gate = build_pair_gate(context.shape[1], horizon, n_experts, config)
    if inputs is None:
        inputs = gate.raw_inputs(context, history, season_lengths)
    if inputs.shape != (n_windows, gate.n_inputs):
        raise ValueError(
            f"inputs must have shape ({n_windows}, {gate.n_inputs}), got {tuple(inputs.shape)}"
        )
    if validation_mask is None:
        val_rows = torch.empty(0, dtype=torch.int64)
        train_rows = torch.arange(n_windows)
    else:
        val_rows = validation_mask.nonzero().squeeze(1)
        train_rows = (~validation_mask).nonzero().squeeze(1)
    if train_rows.numel() == 0:
        raise ValueError("no training windows left for the pair gate after validation")
    points = points.float()
    target = target.float()
    mase_scale = mase_scale.reshape(-1).float()
    gate.fit_standardisation(inputs[train_rows])
    equal = pair_errors(points, target, mase_scale, gate.pair_index)  # (N, P), fixed targets
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(gate.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history_metrics: list[EpochMetrics] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    keep_best = config.keep_best_epoch and val_rows.numel() > 0
    for epoch in range(1, config.epochs + 1):
        gate.train()
        order = train_rows[torch.randperm(train_rows.numel(), generator=generator)]
        for rows in order.split(config.batch_size):
            scores, weights = gate.pair_outputs(inputs[rows])
            if gate.learned_weights:
                errors = pair_errors(
                    points[rows], target[rows], mase_scale[rows], gate.pair_index, weights
                )
            else:
                errors = equal[rows]
            loss = (torch.softmax(scores, dim=1) * errors).sum(dim=1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        gate.eval()
        train_error, _ = _chosen_errors(
            gate, inputs[train_rows], points[train_rows], target[train_rows], mase_scale[train_rows]
        )
        val_mae = None
        usage = None
        if val_rows.numel() > 0:
            val_error, chosen = _chosen_errors(
                gate, inputs[val_rows], points[val_rows], target[val_rows], mase_scale[val_rows]
            )
            val_mae = float(val_error.mean())
            used = gate.pair_index[chosen].reshape(-1)
            usage = (torch.bincount(used, minlength=n_experts).float() / val_rows.numel()).tolist()
        history_metrics.append(
            EpochMetrics(epoch, float(train_error.mean()), val_mae, val_mae, usage)
        )
        if keep_best and val_mae is not None and (best is None or val_mae < best[0]):
            best = (val_mae, epoch, copy.deepcopy(gate.state_dict()))
    chosen_epoch = None
    if best is not None:
        chosen_epoch = best[1]
        gate.load_state_dict(best[2])
    expert_val_mae = None
    if val_rows.numel() > 0:
        observed = ~torch.isnan(target[val_rows])
        errors = (points[val_rows] - target[val_rows].nan_to_num(0.0)[:, None, :]).abs()
        errors = (errors * observed[:, None, :]).sum(2) / observed.sum(1, keepdim=True).clamp_min(1)
        expert_val_mae = (errors / mase_scale[val_rows, None]).mean(dim=0).tolist()
    gate.eval()
    return TrainResult(
        gate=gate,
        config=config,
        history=history_metrics,
        n_train=int(train_rows.numel()),
        n_val=int(val_rows.numel()),
        expert_val_mae=expert_val_mae,
        chosen_epoch=chosen_epoch,
    )
