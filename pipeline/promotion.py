"""Safe promotion: the learned gate must beat the best single expert and the best constant
pair on the same backtest windows; otherwise the constant pair is what gets registered.

The constant pair is a top-2 router like any other: a linear gate with zero weights whose
bias always picks the same two experts with the same weights (``constant_pair_gate``). It
is chosen on the training windows only (pair and weight with the lowest mean MASE), so its
backtest score is as honest as the gate's. The "best single expert" is the expert with the
lowest backtest MASE (chosen in hindsight on the backtest windows: the stricter bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from moe.gates import PAIR_MARGIN, LinearGate, build_gate
from moe.metrics import SeasonLength, mase

__all__ = [
    "PAIR_WEIGHTS",
    "ConstantPair",
    "Verdict",
    "best_constant_pair",
    "constant_pair_gate",
    "judge",
]

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


@dataclass(frozen=True)
class Verdict:
    """Which candidate is registered and why (stored in the artifact and the registry)."""

    use_gate: bool
    reason: str
    details: dict[str, Any]


def judge(
    gate_mase: float,
    single: tuple[str, float],
    pair: tuple[str, float],
    n_windows: int,
) -> Verdict:
    """The gate is used only if its backtest MASE is below both bars (strictly).

    ``single``: (name, MASE) of the best single expert; ``pair``: (label, MASE) of the
    constant pair; all on the same ``n_windows`` backtest windows. A NaN gate MASE loses.
    """
    beats_single = math.isfinite(gate_mase) and gate_mase < single[1]
    beats_pair = math.isfinite(gate_mase) and gate_mase < pair[1]
    use_gate = beats_single and beats_pair
    comparison = (
        f"learned gate MASE {gate_mase:.4f} vs best single expert {single[0]} "
        f"{single[1]:.4f} and constant pair {pair[0]} {pair[1]:.4f} on the same "
        f"{n_windows} backtest windows"
    )
    if use_gate:
        reason = f"{comparison}: the gate beats both, it is the candidate"
    else:
        lost = [
            name
            for name, beaten in (("the best single expert", beats_single), ("the pair", beats_pair))
            if not beaten
        ]
        reason = (
            f"{comparison}: the gate does not beat {' and '.join(lost)}, so the constant "
            f"pair {pair[0]} is the candidate instead"
        )
    details = {
        "candidate": "gate" if use_gate else "constant_pair",
        "gate_mase": gate_mase,
        "best_single": {"expert": single[0], "mase": single[1]},
        "constant_pair": {"pair": pair[0], "mase": pair[1]},
        "n_windows": n_windows,
    }
    return Verdict(use_gate=use_gate, reason=reason, details=details)
