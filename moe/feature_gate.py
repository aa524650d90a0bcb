"""The feature-pair gate: picks one pair of experts per window from cheap series features.

Inputs (by default nothing here runs an expert, so inference stays sparse: only the chosen
pair runs):

* series features of the raw context (``moe.features``, ``F`` of them);
* optionally each expert's **past error on the same series** ``history`` ``(B, E)``: its
  mean MASE on that series' windows that ended before this window's first target point
  (``past_expert_mase``), NaN where there is none. It enters as the log-errors relative to
  their row mean ``(E)``, the row mean itself (how hard the series is) and an
  "available" flag, so windows without history (a new series) still route on features.

A small MLP (``F' -> hidden -> P``) scores the ``P = E (E - 1) / 2`` expert pairs; with
``learned_weights`` it also gives each pair's mixing weight (a sigmoid), otherwise the pair
is mixed equally. With ``members = K > 1`` the gate is a seed ensemble of ``K`` such MLPs
(different initialisations, same data, each trained on its own loss); it picks the pair
with the highest mean softmax probability and mixes it with the members' mean weight.
Trained FFORMA-style (``moe.training.pair``): a softmax over the pairs, minimising the
expected MASE of the chosen pair's mixture.

Opt-in ``use_forecasts`` adds the experts' point forecasts summarised
(``forecast_inputs``); such a gate is dense (``needs_forecasts``: every expert runs before
routing). Measured, not in the default grid (docs/ACCURACY.md).

At inference the gate returns expert logits ``(B, E)`` that make the router's unchanged
``select_top2`` pick the best-scoring pair with its weights: ``log(w) + PAIR_LOGIT`` and
``log(1 - w) + PAIR_LOGIT`` on the pair, 0 elsewhere. Input standardisation (mean, std over
the training rows) lives in buffers, so the state dict alone rebuilds the gate.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from moe.features import FEATURE_NAMES, series_features

__all__ = [
    "FeaturePairGate",
    "PAIR_LOGIT",
    "past_expert_mase",
    "history_inputs",
    "forecast_inputs",
]

#: Lead of the chosen pair's logits over the other experts': softmax leaves the others
#: ~1e-13, so ``select_top2`` picks exactly the pair and renormalises to its weights.
PAIR_LOGIT = 30.0


def history_inputs(history: torch.Tensor | None, n_rows: int, n_experts: int) -> torch.Tensor:
    """Past per-expert MASE ``(B, E)`` (NaN = none) -> gate inputs ``(B, E + 2)``.

    Log-errors relative to their row mean (which expert did better), the row mean (how hard
    the series is), and 1.0 where the row has history. Rows without it are all zero.
    """
    if history is None:
        return torch.zeros(n_rows, n_experts + 2)
    if history.shape != (n_rows, n_experts):
        raise ValueError(
            f"history must have shape ({n_rows}, {n_experts}), got {tuple(history.shape)}"
        )
    logs = torch.log(history.float().clamp_min(0) + 1e-3)  # (B, E)
    available = torch.isfinite(logs).all(dim=1, keepdim=True)  # (B, 1)
    logs = torch.where(available, logs, torch.zeros_like(logs))
    level = logs.mean(dim=1, keepdim=True)  # (B, 1)
    return torch.cat([logs - level, level, available.float()], dim=1)


def past_expert_mase(
    points: torch.Tensor,
    target: torch.Tensor,
    mase_scale: torch.Tensor,
    series_index: np.ndarray,
    origin: np.ndarray,
) -> torch.Tensor:
    """Each expert's mean MASE on the same series' strictly older windows: ``(N, E)``.

    ``points`` ``(N, E, H)``, ``target`` ``(N, H)`` (NaN = missing), ``mase_scale`` ``(N,)``
    or ``(N, 1)``; ``series_index`` and ``origin`` ``(N,)`` (origin = index in the series of
    the first target point). Window ``m`` counts for window ``n`` only when
    ``origin[m] + H <= origin[n]``: its whole target lies before ``n``'s first target point,
    so no target of ``n`` (or later) leaks in. NaN rows where no older window exists.
    """
    n_windows, n_experts, pred_length = points.shape
    scale = mase_scale.reshape(-1, 1).float()
    observed = ~torch.isnan(target)
    errors = (points.float() - target.float()[:, None, :]).abs()  # (N, E, H)
    errors = torch.where(observed[:, None, :], errors, torch.zeros_like(errors))
    per_window = errors.sum(dim=2) / observed.sum(dim=1, keepdim=True).clamp_min(1)  # (N, E)
    per_window = per_window / scale
    usable = observed.any(dim=1).numpy()
    result = torch.full((n_windows, n_experts), float("nan"))
    series_index = np.asarray(series_index)
    origin = np.asarray(origin)
    for series in np.unique(series_index):
        rows = np.flatnonzero(series_index == series)
        for row in rows:
            older = rows[(origin[rows] + pred_length <= origin[row]) & usable[rows]]
            if older.size:
                result[row] = per_window[torch.from_numpy(older)].mean(dim=0)
    return result


def forecast_inputs(forecasts: torch.Tensor) -> torch.Tensor:
    """The experts' point forecasts ``(B, E, H)`` summarised -> gate inputs ``(B, E + 1)``.

    Each expert's mean absolute distance from the median forecast, as log-ratios to their
    row mean (which expert is the outlier), and the log of the row's mean distance relative
    to the median's mean level (how much the experts disagree). Both are ratios, so any
    per-row scaling of the forecasts gives the same inputs.
    """
    points = forecasts.float()
    median = points.median(dim=1, keepdim=True).values  # (B, 1, H)
    distance = (points - median).abs().mean(dim=2)  # (B, E)
    level = median.abs().mean(dim=(1, 2))[:, None]  # (B, 1)
    mean_distance = distance.mean(dim=1, keepdim=True)  # (B, 1)
    tiny = 1e-6 * (level + 1e-6)
    logs = torch.log(distance + tiny)
    relative = logs - logs.mean(dim=1, keepdim=True)
    spread = torch.log((mean_distance + tiny) / (level + 1e-6))
    return torch.cat([relative, spread], dim=1).nan_to_num(0.0)


class FeaturePairGate(nn.Module):
    """Scores expert pairs from series features (and optionally past per-expert errors)."""

    kind = "feature_pair"
    needs_forecasts = False
    raw_context = True  # computes features from the unscaled context, NaN = missing
    uses_history = True  # accepts ``history`` (B, E); None means "no history"
    input_mean: torch.Tensor  # (F',) buffers: standardisation fitted on training rows
    input_std: torch.Tensor
    pair_index: torch.Tensor  # (P, 2) int64: the experts of each pair
    member_mask: torch.Tensor  # (K * P', K * hidden) block-diagonal, only when K > 1

    def __init__(
        self,
        input_length: int,
        pred_length: int,
        n_experts: int,
        *,
        season_length: int = 12,
        hidden: int = 32,
        use_history: bool = False,
        learned_weights: bool = False,
        members: int = 1,
        use_forecasts: bool = False,
    ) -> None:
        super().__init__()
        if n_experts < 2:
            raise ValueError(f"a pair gate needs at least 2 experts, got {n_experts}")
        self.input_length = input_length
        self.pred_length = pred_length
        self.n_experts = n_experts
        self.season_length = int(season_length)
        self.hidden = int(hidden)
        self.use_history = bool(use_history)
        self.learned_weights = bool(learned_weights)
        self.pairs: list[tuple[int, int]] = list(itertools.combinations(range(n_experts), 2))
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = int(members)
        self.use_forecasts = bool(use_forecasts)
        # Routing on the experts' forecasts makes the gate dense: every expert runs first.
        self.needs_forecasts = self.use_forecasts
        self.n_inputs = (
            len(FEATURE_NAMES)
            + (n_experts + 2 if use_history else 0)
            + (n_experts + 1 if use_forecasts else 0)
        )
        self.n_outputs = len(self.pairs) * (2 if learned_weights else 1)  # per member
        width, outputs = self.hidden * self.members, self.n_outputs * self.members
        self.net = nn.Sequential(
            nn.Linear(self.n_inputs, width), nn.GELU(), nn.Linear(width, outputs)
        )
        if self.members > 1:
            # An ensemble of ``members`` independent MLPs in one module: every member has
            # its own ``hidden`` units (the first layer) and its own outputs, and the
            # block-diagonal mask keeps member k's outputs on member k's units only.
            mask = torch.block_diag(*[torch.ones(self.n_outputs, self.hidden)] * self.members)
            self.register_buffer("member_mask", mask)
        self.register_buffer("input_mean", torch.zeros(self.n_inputs))
        self.register_buffer("input_std", torch.ones(self.n_inputs))
        self.register_buffer("pair_index", torch.tensor(self.pairs, dtype=torch.int64))

    # -- inputs ----------------------------------------------------------------------------
    def raw_inputs(
        self,
        context: torch.Tensor,
        history: torch.Tensor | None = None,
        season_length: torch.Tensor | np.ndarray | int | None = None,
        forecasts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Unstandardised inputs ``(B, F')`` from the raw ``context`` ``(B, L)`` (NaN ok),
        ``history`` ``(B, E)`` and the experts' point ``forecasts`` ``(B, E, H)`` (any
        per-row scale: only ratios enter) where the gate uses them."""
        season = self.season_length if season_length is None else season_length
        features = series_features(context.float(), season).cpu()  # (B, F)
        parts = [features]
        if self.use_history:
            parts.append(history_inputs(history, len(features), self.n_experts))
        if self.use_forecasts:
            if forecasts is None:
                raise ValueError("this feature-pair gate routes on the experts' forecasts")
            parts.append(forecast_inputs(forecasts.cpu()))
        return torch.cat(parts, 1) if len(parts) > 1 else features

    def fit_standardisation(self, inputs: torch.Tensor) -> None:
        """Set the input mean/std buffers from training rows ``(N, F')``."""
        with torch.no_grad():
            self.input_mean.copy_(inputs.mean(dim=0))
            self.input_std.copy_(inputs.std(dim=0).nan_to_num(1.0).clamp_min(1e-3))

    def member_outputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each member's pair scores ``(B, K, P)`` and first-expert weights ``(B, K, P)``."""
        standard = (inputs.to(self.input_mean) - self.input_mean) / self.input_std
        if self.members == 1:
            out = self.net(standard)
        else:
            last: nn.Linear = self.net[-1]  # type: ignore[assignment]
            hidden = self.net[1](self.net[0](standard))
            out = nn.functional.linear(hidden, last.weight * self.member_mask, last.bias)
        out = out.reshape(out.shape[0], self.members, self.n_outputs)
        n_pairs = len(self.pairs)
        if self.learned_weights:
            return out[..., :n_pairs], torch.sigmoid(out[..., n_pairs:])
        return out, torch.full_like(out, 0.5)

    def pair_outputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair scores ``(B, P)`` and first-expert weights ``(B, P)`` from raw inputs.

        With several members: the log of the members' mean softmax over pairs, and their
        mean weights (one member: its scores and weights as they are)."""
        scores, weights = self.member_outputs(inputs)
        if self.members == 1:
            return scores[:, 0], weights[:, 0]
        mean_probability = torch.softmax(scores, dim=2).mean(dim=1)
        return torch.log(mean_probability.clamp_min(1e-30)), weights.mean(dim=1)

    # -- the Gate protocol -----------------------------------------------------------------
    def forward(
        self,
        context: torch.Tensor,
        forecasts: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw ``context`` ``(B, L)`` (+ ``history`` ``(B, E)``, ``forecasts`` ``(B, E, H)``)
        -> expert logits ``(B, E)``."""
        inputs = self.raw_inputs(context, history, None, forecasts)
        scores, weights = self.pair_outputs(inputs)
        return self.logits_for(scores, weights)

    def logits_for(self, scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Expert logits that make ``select_top2`` choose each row's top pair and weights."""
        best = scores.argmax(dim=1)  # (B,)
        pair = self.pair_index[best]  # (B, 2)
        weight = weights.gather(1, best[:, None]).squeeze(1).clamp(1e-4, 1 - 1e-4)  # (B,)
        logits = torch.zeros(scores.shape[0], self.n_experts, device=scores.device)
        logits.scatter_(1, pair[:, :1], (torch.log(weight) + PAIR_LOGIT)[:, None])
        logits.scatter_(1, pair[:, 1:], (torch.log1p(-weight) + PAIR_LOGIT)[:, None])
        return logits

    def hyperparameters(self) -> dict[str, int | str | bool]:
        """See ``Gate.hyperparameters``."""
        return {
            "kind": self.kind,
            "input_length": self.input_length,
            "pred_length": self.pred_length,
            "n_experts": self.n_experts,
            "season_length": self.season_length,
            "hidden": self.hidden,
            "use_history": self.use_history,
            "learned_weights": self.learned_weights,
            "members": self.members,
            "use_forecasts": self.use_forecasts,
            "features": ",".join(FEATURE_NAMES),
        }

    def permuted(self, order: Sequence[int]) -> FeaturePairGate:
        """See ``Gate.permuted``: reorders the pair outputs and the history inputs."""
        order = list(order)
        if sorted(order) != list(range(self.n_experts)):
            raise ValueError(f"order must be a permutation of range({self.n_experts}), got {order}")
        twin = copy.deepcopy(self)
        old_pairs = {pair: p for p, pair in enumerate(self.pairs)}
        n_pairs = len(self.pairs)
        rows: list[int] = []
        flips: list[bool] = []
        for first, second in self.pairs:  # new pair -> the old pair of the same experts
            a, b = order[first], order[second]
            rows.append(old_pairs[(min(a, b), max(a, b))])
            flips.append(a > b)
        last: nn.Linear = self.net[-1]  # type: ignore[assignment]
        twin_last: nn.Linear = twin.net[-1]  # type: ignore[assignment]
        with torch.no_grad():
            for member in range(self.members):  # each member's block of outputs
                at = member * self.n_outputs
                index = torch.tensor(rows) + at
                twin_last.weight[at : at + n_pairs] = last.weight[index]
                twin_last.bias[at : at + n_pairs] = last.bias[index]
                if self.learned_weights:
                    sign = torch.tensor([-1.0 if flip else 1.0 for flip in flips])
                    weights_at = at + n_pairs
                    twin_last.weight[weights_at : weights_at + n_pairs] = (
                        sign[:, None] * last.weight[n_pairs + index]
                    )
                    twin_last.bias[weights_at : weights_at + n_pairs] = (
                        sign * last.bias[n_pairs + index]
                    )
            if self.use_history:  # history columns follow the features: E relative errors
                start = len(FEATURE_NAMES)
                columns = torch.arange(self.n_inputs)
                columns[start : start + self.n_experts] = start + torch.tensor(order)
                first_layer: nn.Linear = twin.net[0]  # type: ignore[assignment]
                own_first: nn.Linear = self.net[0]  # type: ignore[assignment]
                first_layer.weight.copy_(own_first.weight[:, columns])
                twin.input_mean.copy_(self.input_mean[columns])
                twin.input_std.copy_(self.input_std[columns])
            if self.use_forecasts:  # the last E + 1 columns: E relative distances, spread
                start = self.n_inputs - self.n_experts - 1
                columns = torch.arange(self.n_inputs)
                columns[start : start + self.n_experts] = start + torch.tensor(order)
                first_layer = twin.net[0]  # type: ignore[assignment]
                first_layer.weight.copy_(first_layer.weight[:, columns].clone())
                twin.input_mean.copy_(twin.input_mean[columns].clone())
                twin.input_std.copy_(twin.input_std[columns].clone())
        return twin

    def start_at_pair(self, pair: tuple[int, int]) -> None:
        """See ``Gate.start_at_pair``: constant scores, the pair's the highest."""
        first, second = sorted(pair)
        if first == second or not (0 <= first and second < self.n_experts):
            raise ValueError(
                f"pair must be two different experts in range({self.n_experts}), got {pair}"
            )
        last: nn.Linear = self.net[-1]  # type: ignore[assignment]
        with torch.no_grad():
            last.weight.zero_()
            last.bias.zero_()
            for member in range(self.members):
                last.bias[member * self.n_outputs + self.pairs.index((first, second))] = 1.0
