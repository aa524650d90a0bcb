"""Safe promotion: the learned gate must beat the best single expert and the best constant
pair on the same backtest windows; otherwise the constant pair is what gets registered.

The constant pair (``moe.constant_pair``) is a top-2 router like any other: a linear gate
with zero weights whose bias always picks the same two experts with the same weights. It
is chosen on the training windows only (pair and weight with the lowest mean MASE), so its
backtest score is as honest as the gate's. The "best single expert" is the expert with the
lowest backtest MASE (chosen in hindsight on the backtest windows: the stricter bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Verdict", "judge"]


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
