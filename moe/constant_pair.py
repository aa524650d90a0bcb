"""The best constant pair: a top-2 router that sends every window to the same two experts.

A linear gate with zero weights whose bias always picks the same two experts with the same
weights (``constant_pair_gate``); the pair and weight are those with the lowest mean MASE
on the windows given (``best_constant_pair``). It is the simplest candidate of the
validated selection (``moe.selection``) and the fallback of safe promotion
(``pipeline.promotion``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from moe.gates import PAIR_MARGIN, LinearGate, build_gate
from moe.metrics import SeasonLength, mase

__all__ = ["PAIR_WEIGHTS", "ConstantPair", "best_constant_pair", "constant_pair_gate"]


#: Weights of the first expert of a constant pair that are tried (the second gets 1 - w).
PAIR_WEIGHTS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class ConstantPair:
    """Experts ``first`` and ``second`` (positions), mixed ``weight`` : ``1 - weight``."""

    first: int
    second: int
    weight: float
    train_mase: float  # mean per-window MASE on the training windows it was chosen on

    def label(self, names: list[str]) -> str:
        return f"{names[self.first]}*{self.weight:.1f}+{names[self.second]}*{1 - self.weight:.1f}"


def best_constant_pair(
    points: np.ndarray,
    target: np.ndarray,
    context: np.ndarray,
    season_length: SeasonLength,
    weights: tuple[float, ...] = PAIR_WEIGHTS,
) -> ConstantPair:
    """The pair and weight with the lowest mean MASE over these (training) windows.

    ``points`` ``(N, E, H)``, ``target`` ``(N, H)``, ``context`` ``(N, L)``;
    ``season_length`` an int or ``(N,)``. Ties go to the lower positions, then to 0.5.
    """
    n_experts = points.shape[1]
    if n_experts < 2:
        raise ValueError(f"need at least two experts, got points {points.shape}")
    best: ConstantPair | None = None
    for first in range(n_experts):
        for second in range(n_experts):
            if first == second:
                continue
            for weight in weights:
                if weight == 0.5 and second < first:
                    continue  # the same mixture as (second, first, 0.5)
                mixed = weight * points[:, first] + (1 - weight) * points[:, second]
                scores = mase(target, mixed, context, season_length)
                score = float(np.nanmean(scores)) if np.isfinite(scores).any() else math.inf
                if best is None or score < best.train_mase:
                    best = ConstantPair(first, second, weight, score)
    assert best is not None
    return best


def constant_pair_gate(
    input_length: int, pred_length: int, n_experts: int, pair: ConstantPair
) -> LinearGate:
    """A linear gate that sends every window to ``pair`` with its weights.

    Zero weights; bias ``PAIR_MARGIN + log(w / (1 - w))`` for the first expert and
    ``PAIR_MARGIN`` for the second, so the top two after softmax are always the pair and
    their renormalised weights are exactly ``w`` and ``1 - w``.
    """
    gate = build_gate("linear", input_length, pred_length, n_experts)
    assert isinstance(gate, LinearGate)
    linear = gate.linear
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[pair.first] = PAIR_MARGIN + math.log(pair.weight / (1 - pair.weight))
        linear.bias[pair.second] = PAIR_MARGIN
    return gate.eval()
