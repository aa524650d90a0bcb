"""Training the feature-pair gate with FFORMA's loss over expert pairs.

For window ``n`` and pair ``p = (i, j)`` the mixture ``w f_i + (1 - w) f_j`` (``w = 0.5``
unless the gate learns it) has the error ``err[n, p]`` in MASE units (mean absolute error
over the observed target points divided by the window's MASE scale). The loss is the
expected error under a softmax over the pairs, ``mean_n sum_p softmax(s_n)_p err[n, p]``:
smooth in the scores, and minimal when each window's mass sits on its best pair. AdamW on
mini-batches; the epochs and ``keep_best_epoch`` are the shared loop's
(``moe.training.steps.run_epochs``), scored by the validation error of the *chosen*
(argmax) pair (epoch 0 = the untrained gate is never a candidate: its choice is arbitrary).
Without a validation mask every window trains (no random split, unlike the other gates).

Shapes: ``context`` ``(N, L)`` raw (NaN = missing), ``target`` ``(N, H)``, ``points``
``(N, E, H)``, ``mase_scale`` ``(N,)``, ``history`` ``(N, E)`` (NaN = none),
``season_lengths`` ``(N,)`` ints (features' season), ``inputs`` ``(N, F')`` precomputed
gate inputs (``FeaturePairGate.raw_inputs``) to share across a grid.
"""

from __future__ import annotations

import torch

from moe.feature_gate import FeaturePairGate
from moe.training.config import TrainConfig
from moe.training.results import EpochMetrics, TrainResult
from moe.training.steps import absolute_errors, cpu_threads, run_epochs, split_by_mask

__all__ = ["pair_errors", "train_pair_gate", "build_pair_gate", "PairTrainer"]


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
    errors = absolute_errors(mixed, target.nan_to_num(0.0), observed, per_window=True)
    return errors / mase_scale.reshape(-1, 1)


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
            members=config.pair_members,
            use_forecasts=config.use_forecasts,
        )


class PairTrainer:
    """A ``FeaturePairGate``, its AdamW optimiser and the cached windows it trains on.

    ``inputs`` ``(N, F')`` raw gate inputs; ``points`` ``(N, E, H)``, ``target`` ``(N, H)``
    and ``mase_scale`` ``(N,)`` as floats; the gate's standardisation is fitted on the
    training rows here.
    """

    def __init__(
        self,
        gate: FeaturePairGate,
        inputs: torch.Tensor,
        points: torch.Tensor,
        target: torch.Tensor,
        mase_scale: torch.Tensor,
        config: TrainConfig,
        train_rows: torch.Tensor,
        val_rows: torch.Tensor,
    ) -> None:
        self.gate = gate
        self.inputs = inputs
        self.points = points
        self.target = target
        self.mase_scale = mase_scale
        self.config = config
        self.train_rows = train_rows
        self.val_rows = val_rows
        gate.fit_standardisation(inputs[train_rows])
        self.equal = pair_errors(points, target, mase_scale, gate.pair_index)  # (N, P), fixed
        self.optimizer = torch.optim.AdamW(
            gate.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )

    def train_epoch(self, order: torch.Tensor) -> None:
        """Epoch step: one pass over ``order`` (shuffled training rows) in batches."""
        self.gate.train()
        for rows in order.split(self.config.batch_size):
            # (b, K, P): each ensemble member is trained on its own FFORMA loss.
            scores, weights = self.gate.member_outputs(self.inputs[rows])
            if self.gate.learned_weights:
                errors = torch.stack(
                    [
                        pair_errors(
                            self.points[rows],
                            self.target[rows],
                            self.mase_scale[rows],
                            self.gate.pair_index,
                            weights[:, member],
                        )
                        for member in range(self.gate.members)
                    ],
                    dim=1,
                )
            else:
                errors = self.equal[rows][:, None, :]
            loss = (torch.softmax(scores, dim=2) * errors).sum(dim=2).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()

    def chosen_errors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-window MASE of the argmax pair ``(n,)`` and the chosen pair index ``(n,)``."""
        with torch.no_grad():
            scores, weights = self.gate.pair_outputs(self.inputs[rows])
            errors = pair_errors(
                self.points[rows],
                self.target[rows],
                self.mase_scale[rows],
                self.gate.pair_index,
                weights,
            )  # (n, P)
            best = scores.argmax(dim=1)
            return errors.gather(1, best[:, None]).squeeze(1), best

    def measure(self, epoch: int) -> EpochMetrics:
        """Measure step: mean MASE of the chosen pairs (training and validation rows) and
        each expert's share of the validation windows' pairs."""
        self.gate.eval()
        train_error, _ = self.chosen_errors(self.train_rows)
        if self.val_rows.numel() == 0:
            return EpochMetrics(epoch, float(train_error.mean()), None, None, None)
        val_error, chosen = self.chosen_errors(self.val_rows)
        val_mae = float(val_error.mean())
        used = self.gate.pair_index[chosen].reshape(-1)
        n_experts = self.points.shape[1]
        usage = (torch.bincount(used, minlength=n_experts).float() / self.val_rows.numel()).tolist()
        return EpochMetrics(epoch, float(train_error.mean()), val_mae, val_mae, usage)

    def expert_val_mae(self) -> list[float] | None:
        """Each single expert's mean per-window MASE on the validation rows, or None."""
        if self.val_rows.numel() == 0:
            return None
        target = self.target[self.val_rows]
        observed = ~torch.isnan(target)
        errors = absolute_errors(
            self.points[self.val_rows], target.nan_to_num(0.0), observed, per_window=True
        )  # (v, E)
        return (errors / self.mase_scale[self.val_rows, None]).mean(dim=0).tolist()


def train_pair_gate(
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
    """Train a ``FeaturePairGate`` on cached forecasts (module docstring for the loss).

    Runs on one CPU thread: each step is a few tiny kernels, and OpenMP hand-offs on a busy
    CPU made them 10-100x slower.
    """
    with cpu_threads(1):
        n_windows, n_experts, pred_length = points.shape
        gate = build_pair_gate(context.shape[1], pred_length, n_experts, config)  # init
        if inputs is None:
            inputs = gate.raw_inputs(context, history, season_lengths, points)
        if inputs.shape != (n_windows, gate.n_inputs):
            raise ValueError(
                f"inputs must have shape ({n_windows}, {gate.n_inputs}), got {tuple(inputs.shape)}"
            )
        if validation_mask is None:  # split
            val_rows = torch.empty(0, dtype=torch.int64)
            train_rows = torch.arange(n_windows)
        else:
            train_rows, val_rows = split_by_mask(n_windows, validation_mask)
        if train_rows.numel() == 0:
            raise ValueError("no training windows left for the pair gate after validation")
        trainer = PairTrainer(
            gate,
            inputs,
            points.float(),
            target.float(),
            mase_scale.reshape(-1).float(),
            config,
            train_rows,
            val_rows,
        )
        generator = torch.Generator().manual_seed(config.seed)
        epochs = run_epochs(trainer, config, generator, measure_start=False)
        gate.eval()
        return TrainResult(
            gate=gate,
            config=config,
            history=epochs.history,
            n_train=int(train_rows.numel()),
            n_val=int(val_rows.numel()),
            expert_val_mae=trainer.expert_val_mae(),
            chosen_epoch=epochs.chosen_epoch,
        )
