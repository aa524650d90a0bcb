"""What a gate fit returns: per-epoch metrics and the trained gate with its provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

from moe.feature_gate import FeaturePairGate
from moe.gates import ContextualGate, LinearGate
from moe.training.config import TrainConfig

__all__ = ["EpochMetrics", "TrainResult"]


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch. Losses and errors are in window-scale units (comparable across series).

    ``train_loss``: Huber loss (without the balance term) of the gate at the end of the
    epoch over all training windows. ``val_usage``: share of validation rows that chose each
    expert (sums to 2.0 over
    experts, since every row chooses two). Validation fields are None without validation.
    """

    epoch: int
    train_loss: float
    val_loss: float | None
    val_mae: float | None
    val_usage: list[float] | None

    def as_dict(self) -> dict[str, float | int | list[float] | None]:
        """Plain data for the artifact."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "val_mae": self.val_mae,
            "val_usage": self.val_usage,
        }


@dataclass(frozen=True)
class TrainResult:
    """A trained gate (in eval mode, on the CPU) and how it got there.

    ``expert_val_mae``: the scaled MAE of each single expert on the validation windows,
    the baseline the gate's ``val_mae`` should beat. ``initial``: the same metrics for the
    gate before any training (epoch 0), so that "no training" can win a model selection.
    """

    gate: LinearGate | ContextualGate | FeaturePairGate
    config: TrainConfig
    history: list[EpochMetrics]
    n_train: int
    n_val: int
    expert_val_mae: list[float] | None = field(default=None)
    initial: EpochMetrics | None = field(default=None)  # the gate before training, epoch 0
    start_pair: tuple[int, int] | None = field(default=None)  # with init="best_pair"
    chosen_epoch: int | None = field(default=None)  # with keep_best_epoch: the epoch returned
