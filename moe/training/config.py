"""Settings of a gate fit (``TrainConfig``) and of the seed's windowing (``WindowConfig``).

Kept apart on purpose: ``TrainConfig`` decides how a gate is optimised on windows it is
given; how windows are cut from series is the caller's business (``WindowConfig`` for the
seed's ``moe.api.train_and_save``, ``pipeline.config.RetrainConfig`` for ``moe retrain``),
so a training config never carries a windowing default that a caller silently ignores.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moe.gates import GateKind
from moe.scaling import ScalingMethod

__all__ = ["TrainConfig", "WindowConfig"]

#: Keys that ``TrainConfig`` held before windowing got its own model, and where they went.
_MOVED = {
    "windowing": "WindowConfig.windowing",
    "stride": "WindowConfig.stride",
    "max_windows_per_series": "WindowConfig.max_windows_per_series",
    "expert_batch_size": "ExpertConfig.batch_size",
}


class TrainConfig(BaseModel):
    """Everything that decides a trained gate. Defaults reproduce the seed where it had one."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    batch_size: int = Field(default=8, ge=1, description="Windows per optimiser step (seed: 8).")
    epochs: int = Field(
        default=5,
        ge=0,
        description="Passes over the training windows (seed: 5); 0 keeps the initial gate "
        "(with init='best_pair': the best constant pair).",
    )
    lr: float = Field(default=1e-3, gt=0, description="Adam learning rate (seed: 1e-3).")
    huber_delta: float = Field(
        default=2.0, gt=0, description="HuberLoss delta, in the loss's units (seed: 2.0)."
    )
    seed: int = Field(default=0, description="Seeds gate init, the validation split and shuffling.")
    gate: GateKind = Field(
        default="linear",
        description="'linear' (seed's nn.Linear, sparse inference), 'contextual' "
        "(attention over the experts' forecasts; all experts run at inference) or "
        "'feature_pair' (an MLP on series features picks a pair; sparse; moe.training.pair).",
    )
    init: Literal["random", "best_pair"] = Field(
        default="random",
        description="'random' (seed: torch's default init) or 'best_pair': start as the "
        "constant router to the equally weighted pair of experts with the lowest error on the "
        "training windows, then learn per-window departures from it.",
    )
    start_pair: tuple[int, int] | None = Field(
        default=None,
        description="With init='best_pair': start at these two expert positions instead of "
        "the pair that is best on the training windows (e.g. a pair chosen on validation).",
    )
    keep_best_epoch: bool = Field(
        default=False,
        description="Return the gate from the epoch (0 = the untrained start) with the lowest "
        "validation MAE instead of the last one (early stopping; needs validation windows).",
    )
    loss_scale: Literal["window", "seasonal_naive"] = Field(
        default="window",
        description="Units of the loss: 'window' (the gate's input scale, see 'scaling') or "
        "'seasonal_naive' (each window's in-context seasonal-naive MAE, so the loss is a "
        "MASE and every series counts as it does in the MASE of a backtest).",
    )
    season_length: int = Field(
        default=1, ge=1, description="Season of the 'seasonal_naive' loss scale (12 = monthly)."
    )
    pair_hidden: int = Field(default=32, ge=1, description="Feature-pair gate: MLP width.")
    pair_members: int = Field(
        default=1,
        ge=1,
        description="Feature-pair gate: MLPs in the seed ensemble (different inits, mean "
        "softmax over pairs at inference).",
    )
    pair_weights: Literal["equal", "learned"] = Field(
        default="equal", description="Feature-pair gate: mix the pair equally or learn w."
    )
    use_history: bool = Field(
        default=False,
        description="Feature-pair gate: also route on each expert's past MASE on the same "
        "series (strictly older windows; moe.feature_gate.past_expert_mase).",
    )
    use_forecasts: bool = Field(
        default=False,
        description="Feature-pair gate: also route on the experts' point forecasts "
        "(distance from the median, spread); dense at inference: every expert runs.",
    )
    weight_decay: float = Field(
        default=0.0, ge=0, description="Feature-pair gate: AdamW weight decay."
    )
    gate_width: int = Field(default=32, ge=1, description="Contextual gate: token width.")
    gate_heads: int = Field(default=4, ge=1, description="Contextual gate: attention heads.")
    balance_weight: float = Field(
        default=0.01,
        ge=0,
        description="Weight of the load-balancing loss (1.0 at uniform load); 0 disables it.",
    )
    val_fraction: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of windows held out for validation when no explicit split is "
        "given (at least one window when there are two or more).",
    )
    scaling: ScalingMethod = Field(
        default="mean_abs",
        description="Per-window scaling of gate input and loss: 'mean_abs' or 'none' (seed).",
    )
    device: str = Field(default="cpu", description="Device the gate trains on.")

    @model_validator(mode="before")
    @classmethod
    def _windowing_moved(cls, data: Any) -> Any:
        """Name the new home of a windowing key instead of pydantic's bare 'extra' error."""
        if isinstance(data, dict):
            moved = [f"{key} -> {_MOVED[key]}" for key in data if key in _MOVED]
            if moved:
                raise ValueError(
                    "TrainConfig holds training settings only; windowing moved: " + ", ".join(moved)
                )
        return data

    @model_validator(mode="after")
    def _start_pair_needs_pair_init(self) -> TrainConfig:
        if self.start_pair is not None and self.init != "best_pair":
            raise ValueError(
                f"start_pair={self.start_pair} only applies with init='best_pair', "
                f"got init={self.init!r}"
            )
        return self


class WindowConfig(BaseModel):
    """How ``moe.api.train_and_save`` cuts training windows from its series (the seed path).

    ``moe retrain`` has its own windowing fields (``pipeline.config.RetrainConfig``) with
    production defaults; these are the seed path's (e.g. 64 windows per series, not 6).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    windowing: Literal["seed", "rolling"] = Field(
        default="rolling",
        description="'seed' = one window per series (seq[:L] -> next H); 'rolling' = "
        "rolling origins from each series' end (moe.data.rolling_windows).",
    )
    stride: int | None = Field(
        default=None, ge=1, description="Rolling windows: step between origins (None: pred_length)."
    )
    max_windows_per_series: int | None = Field(
        default=64, ge=1, description="Rolling windows: keep the newest this many per series."
    )
    min_context: int | None = Field(
        default=None,
        ge=1,
        description="Rolling windows: fewest points before a window's target; shorter "
        "histories are NaN-padded on the left, and the model then forecasts series of at "
        "least this many points. None: the smaller of 36 and input_length, and for a series "
        "too short for a window with that, what it has (at least 8 points and two seasons), "
        "as moe retrain. "
        "Ignored by 'seed' windowing (full windows only).",
    )
