"""Gates: map a (scaled) window to one logit per expert.

Every gate is called as ``gate(context, forecasts)``:

* ``context``: ``(B, L)`` float32, scaled per window (``moe.scaling``), no NaN.
* ``forecasts``: ``(B, E, H)`` scaled expert point forecasts, or ``None``. Only gates with
  ``needs_forecasts = True`` read it; the linear gate routes before any expert runs.
* returns logits ``(B, E)``; the expert axis follows the router's ``expert_keys`` order.

Three kinds, chosen by ``TrainConfig.gate``:

* ``"linear"``: the seed's gate, one ``nn.Linear(input_length, n_experts)``. Sparse at
  inference: only the two chosen experts run.
* ``"contextual"``: also sees every expert's forecast before routing. Each expert becomes a
  token (its forecast, an expert embedding and the window's context); one self-attention
  layer lets the experts' outputs inform each other's scores ("collaborative experts"),
  plus the linear gate's term. Dense at inference: all experts must run first.
* ``"feature_pair"``: an MLP on cheap series features (and optionally each expert's past
  error on the same series) scores expert *pairs* (``moe.feature_gate``). Sparse. It reads
  the raw context (``raw_context = True``) and an optional ``history`` ``(B, E)``.

``start_at_pair`` turns a fresh gate into a constant router that sends every window to one
pair of experts, weighted equally (``TrainConfig.init="best_pair"``). Top-2 selection has
no gradient, so a randomly initialised gate rarely moves from the pair it happens to start
on; starting from the pair that is best on the training windows and learning per-window
departures from it is the better start when windows are few (docs/ACCURACY.md).

``load_balancing_loss`` is the auxiliary loss that keeps a gate from collapsing onto one
expert (Switch-Transformer style, for top-k dispatch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn

from moe.feature_gate import FeaturePairGate

__all__ = [
    "GateKind",
    "Gate",
    "LinearGate",
    "ContextualGate",
    "build_gate",
    "build_gate_from_spec",
    "load_balancing_loss",
    "PAIR_MARGIN",
]

#: Logit lead of the starting pair over the other experts in ``start_at_pair``. With 4
#: experts the pair holds 44% probability each, the rest 6%: a clear choice that training
#: can still overturn.
PAIR_MARGIN = 2.0

GateKind = Literal["linear", "contextual", "feature_pair"]
_GateT = TypeVar("_GateT", bound=nn.Module)


class Gate(Protocol):
    """What the router and the trainer need from a gate."""

    kind: GateKind
    needs_forecasts: bool
    n_experts: int

    def __call__(self, context: torch.Tensor, forecasts: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, E)`` from ``context`` ``(B, L)`` and ``forecasts`` ``(B, E, H)``/None."""
        ...

    def hyperparameters(self) -> dict[str, int | str]:
        """Plain data that, with the state dict, rebuilds the gate (stored in the artifact)."""
        ...

    def permuted(self, order: Sequence[int]) -> nn.Module:
        """A copy whose expert ``i`` is this gate's expert ``order[i]``."""
        ...

    def start_at_pair(self, pair: tuple[int, int]) -> None:
        """In place: route every window to experts ``pair``, equally weighted."""
        ...


def _check_pair(pair: tuple[int, int], n_experts: int) -> None:
    first, second = pair
    if first == second or not (0 <= first < n_experts and 0 <= second < n_experts):
        raise ValueError(f"pair must be two different experts in range({n_experts}), got {pair}")


def _constant_pair(linear: nn.Linear, pair: tuple[int, int]) -> None:
    """Zero ``linear``'s weights; its bias favours ``pair`` by ``PAIR_MARGIN``."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.bias[list(pair)] = PAIR_MARGIN


def _check_order(order: Sequence[int], n_experts: int) -> list[int]:
    order = list(order)
    if sorted(order) != list(range(n_experts)):
        raise ValueError(f"order must be a permutation of range({n_experts}), got {order}")
    return order


class LinearGate(nn.Module):
    """The seed's gate: ``logits = Linear(input_length, n_experts)(context)``."""

    kind: GateKind = "linear"
    needs_forecasts = False

    def __init__(self, input_length: int, n_experts: int) -> None:
        super().__init__()
        self.input_length = input_length
        self.n_experts = n_experts
        self.linear = nn.Linear(input_length, n_experts)

    def forward(self, context: torch.Tensor, forecasts: torch.Tensor | None = None) -> torch.Tensor:
        """``context`` ``(B, L)`` -> logits ``(B, E)``; ``forecasts`` is ignored."""
        return self.linear(context)

    def hyperparameters(self) -> dict[str, int | str]:
        """See ``Gate.hyperparameters``."""
        return {"kind": self.kind, "input_length": self.input_length, "n_experts": self.n_experts}

    def permuted(self, order: Sequence[int]) -> LinearGate:
        """See ``Gate.permuted``: reorders the output rows."""
        index = torch.tensor(_check_order(order, self.n_experts))
        twin = copy.deepcopy(self)
        with torch.no_grad():
            twin.linear.weight.copy_(self.linear.weight[index])
            twin.linear.bias.copy_(self.linear.bias[index])
        return twin

    def start_at_pair(self, pair: tuple[int, int]) -> None:
        """See ``Gate.start_at_pair``: weights zero, bias ``PAIR_MARGIN`` on the pair."""
        _check_pair(pair, self.n_experts)
        _constant_pair(self.linear, pair)


class ContextualGate(nn.Module):
    """Routes on the context *and* the experts' forecasts, via attention across experts.

    Token of expert ``e``: ``proj(forecast_e) + embedding_e + proj(context)`` ``(B, E, d)``.
    One self-attention layer across the ``E`` tokens (no positional order, so the gate is
    equivariant to reordering the experts together with their embeddings), a residual
    LayerNorm, a per-token score, plus the linear gate's ``Linear(L, E)(context)``.
    """

    kind: GateKind = "contextual"
    needs_forecasts = True

    def __init__(
        self, input_length: int, pred_length: int, n_experts: int, width: int = 32, heads: int = 4
    ) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"gate width ({width}) must be divisible by heads ({heads})")
        self.input_length = input_length
        self.pred_length = pred_length
        self.n_experts = n_experts
        self.width = width
        self.heads = heads
        self.context_proj = nn.Linear(input_length, width)
        self.forecast_proj = nn.Linear(pred_length, width)
        self.expert_embedding = nn.Parameter(0.02 * torch.randn(n_experts, width))
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.score = nn.Linear(width, 1)
        self.linear = nn.Linear(input_length, n_experts)

    def forward(self, context: torch.Tensor, forecasts: torch.Tensor | None = None) -> torch.Tensor:
        """``context`` ``(B, L)``, ``forecasts`` ``(B, E, H)`` -> logits ``(B, E)``."""
        if forecasts is None:
            raise ValueError("the contextual gate needs the experts' forecasts (B, E, H), got None")
        expected = (context.shape[0], self.n_experts, self.pred_length)
        if tuple(forecasts.shape) != expected:
            raise ValueError(f"forecasts must have shape {expected}, got {tuple(forecasts.shape)}")
        tokens = (
            self.forecast_proj(forecasts)
            + self.expert_embedding
            + self.context_proj(context)[:, None, :]
        )  # (B, E, d)
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)  # (B, E, d)
        hidden = self.norm(tokens + attended)  # (B, E, d)
        return self.score(hidden).squeeze(-1) + self.linear(context)  # (B, E)

    def hyperparameters(self) -> dict[str, int | str]:
        """See ``Gate.hyperparameters``."""
        return {
            "kind": self.kind,
            "input_length": self.input_length,
            "pred_length": self.pred_length,
            "n_experts": self.n_experts,
            "width": self.width,
            "heads": self.heads,
        }

    def permuted(self, order: Sequence[int]) -> ContextualGate:
        """See ``Gate.permuted``: reorders the expert embeddings and the linear term."""
        index = torch.tensor(_check_order(order, self.n_experts))
        twin = copy.deepcopy(self)
        with torch.no_grad():
            twin.expert_embedding.copy_(self.expert_embedding[index])
            twin.linear.weight.copy_(self.linear.weight[index])
            twin.linear.bias.copy_(self.linear.bias[index])
        return twin

    def start_at_pair(self, pair: tuple[int, int]) -> None:
        """See ``Gate.start_at_pair``: the attention path's score starts at zero (it still
        gets gradients through ``score.weight``), the linear term favours the pair."""
        _check_pair(pair, self.n_experts)
        _constant_pair(self.linear, pair)
        with torch.no_grad():
            self.score.weight.zero_()
            self.score.bias.zero_()


def build_gate(
    kind: GateKind,
    input_length: int,
    pred_length: int,
    n_experts: int,
    width: int = 32,
    heads: int = 4,
) -> LinearGate | ContextualGate | FeaturePairGate:
    """A freshly initialised gate of ``kind`` (initialised from torch's current RNG)."""
    if n_experts < 2:
        raise ValueError(f"top-2 routing needs at least 2 experts, got {n_experts}")
    if input_length < 1 or pred_length < 1:
        raise ValueError(
            f"input_length and pred_length must be >= 1, got {input_length}, {pred_length}"
        )
    if kind == "linear":
        return LinearGate(input_length, n_experts)
    if kind == "contextual":
        return ContextualGate(input_length, pred_length, n_experts, width=width, heads=heads)
    if kind == "feature_pair":
        return FeaturePairGate(input_length, pred_length, n_experts)
    raise ValueError(
        f"unknown gate kind {kind!r}; expected 'linear', 'contextual' or 'feature_pair'"
    )


def build_gate_from_spec(
    spec: dict[str, Any], input_length: int, pred_length: int, n_experts: int
) -> LinearGate | ContextualGate | FeaturePairGate:
    """A fresh gate from the artifact's ``gate`` dict (``hyperparameters()`` of a trained one)."""
    if spec.get("kind") == "feature_pair":
        return FeaturePairGate(
            input_length,
            pred_length,
            n_experts,
            season_length=int(spec.get("season_length", 12)),
            hidden=int(spec.get("hidden", 32)),
            use_history=bool(spec.get("use_history", False)),
            learned_weights=bool(spec.get("learned_weights", False)),
            members=int(spec.get("members", 1)),
            use_forecasts=bool(spec.get("use_forecasts", False)),
        )
    return build_gate(
        spec["kind"],
        input_length,
        pred_length,
        n_experts,
        int(spec.get("width", 32)),
        int(spec.get("heads", 4)),
    )


def load_balancing_loss(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss ``E * sum_e f_e * P_e``; 1.0 when the load is uniform, more when not.

    ``probs``: ``(B, E)`` softmax over all experts (carries the gradient).
    ``selected``: ``(B, K)`` int64 indices of the experts each row is dispatched to.
    ``f_e`` is the share of dispatched slots that went to expert ``e`` (not differentiable);
    ``P_e`` the mean probability of ``e``. Pushing down ``P_e`` of overloaded experts
    spreads the load.
    """
    n_experts = probs.shape[1]
    slots = torch.zeros(n_experts, dtype=probs.dtype, device=probs.device)
    slots.scatter_add_(
        0, selected.reshape(-1), torch.ones_like(selected.reshape(-1), dtype=probs.dtype)
    )
    share = slots / selected.numel()  # (E,)
    return n_experts * (share * probs.mean(dim=0)).sum()
