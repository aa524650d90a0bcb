"""Gate training: settings, the two entry points and the trainers behind them.

* ``config``: ``TrainConfig`` (how a gate is optimised) and ``WindowConfig`` (how the
  seed's ``train_and_save`` cuts windows), kept apart.
* ``fit``: ``train_gate`` (on the expert-forecast cache) and ``train_gate_live`` (experts
  run in every step, the seed's design): check, scale, hand to a trainer.
* ``trainer``: the linear/contextual gate trainer (split, init, epoch, measure, keep best).
* ``pair``: the feature-pair gate trainer (FFORMA's loss over expert pairs).
* ``steps``: what both trainers share (split, epoch loop, keep best, per-expert baseline).
* ``results``: ``EpochMetrics`` and ``TrainResult``.

Only the gate's parameters are optimised. Inputs and the loss are scaled per window
(``moe.scaling``); NaN targets are left out of the loss.
"""

from moe.training.config import TrainConfig, WindowConfig
from moe.training.fit import train_gate, train_gate_live
from moe.training.results import EpochMetrics, TrainResult
from moe.training.trainer import best_pair

__all__ = [
    "TrainConfig",
    "WindowConfig",
    "EpochMetrics",
    "TrainResult",
    "train_gate",
    "train_gate_live",
    "best_pair",
]
