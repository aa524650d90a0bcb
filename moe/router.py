"""Top-2 routing: the one implementation of the mixing math, and the ``MoERouter`` module.

The mixing math (``select_top2`` then ``mix``) is shared by gate training on the cache
(``replay_top2`` over cached forecasts ``(N, E, H)``, a gather) and by the router at
inference, where only the chosen experts run and their rows are scattered into a
NaN-filled ``(B, E, H)`` buffer before the same ``mix`` reads them back with a gather.

Shapes: ``logits``/``probs`` ``(B, E)``; ``indices``/``weights`` ``(B, 2)``;
``points`` ``(B, E, H)``; ``quantiles`` ``(B, E, H, Q)`` (layout of ``moe.experts.base``);
mixture ``point`` ``(B, H)``, ``quantiles`` ``(B, H, Q)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
from torch import nn

from moe.experts.base import QUANTILE_LEVELS, Expert
from moe.experts.registry import resolve_experts
from moe.gates import GateKind, build_gate, build_gate_from_spec
from moe.scaling import ScalingMethod, scale_context, scale_forecasts, window_scale

__all__ = [
    "TOP_K",
    "Selection",
    "Mixture",
    "Routing",
    "select_top2",
    "gather_experts",
    "mix",
    "replay_top2",
    "run_experts",
    "MoERouter",
]

#: Experts mixed per row.
TOP_K = 2


@dataclass(frozen=True)
class Selection:
    """Top-2 choice per row: ``probs`` ``(B, E)``, ``indices`` ``(B, 2)``, ``weights`` ``(B, 2)``.

    ``weights`` are the two chosen probabilities renormalised to sum to one; ``indices[:, 0]``
    is the more probable expert.
    """

    probs: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor


@dataclass(frozen=True)
class Mixture:
    """Mixed forecast and how it was made.

    ``point`` ``(B, H)``; ``quantiles`` ``(B, H, Q)`` or None; ``chosen`` ``(B, 2, H)`` the two
    chosen experts' point forecasts (in ``selection.indices`` order); ``selection``.
    """

    point: torch.Tensor
    quantiles: torch.Tensor | None
    chosen: torch.Tensor
    selection: Selection


def select_top2(logits: torch.Tensor) -> Selection:
    """Softmax, ``torch.topk(k=2)``, renormalise the two weights (the seed's rule).

    ``logits`` ``(B, E)`` with ``E >= 2``.
    """
    if logits.ndim != 2 or logits.shape[1] < TOP_K:
        raise ValueError(f"logits must have shape (B, E>=2), got {tuple(logits.shape)}")
    probs = torch.softmax(logits, dim=-1)  # (B, E)
    top_probs, indices = torch.topk(probs, k=TOP_K, dim=-1)  # (B, 2), (B, 2)
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (B, 2)
    return Selection(probs=probs, indices=indices, weights=weights)


def gather_experts(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Rows ``values[b, indices[b, k], ...]``: ``(B, E, *rest)`` -> ``(B, K, *rest)``."""
    index = indices.view(*indices.shape, *([1] * (values.ndim - 2)))
    return values.gather(1, index.expand(*indices.shape, *values.shape[2:]))


def mix(
    selection: Selection, points: torch.Tensor, quantiles: torch.Tensor | None = None
) -> Mixture:
    """Weighted sum of the two chosen experts' forecasts, read from ``points`` by a gather.

    ``points`` ``(B, E, H)``: entries of experts not chosen for a row are never read (they
    may be NaN). ``quantiles`` ``(B, E, H, Q)``: mixed NaN-aware, i.e. when one chosen
    expert lacks a level the other's value is used; NaN only where both lack it.
    """
    chosen = gather_experts(points, selection.indices)  # (B, 2, H)
    point = (selection.weights[:, :, None] * chosen).sum(dim=1)  # (B, H)
    mixed_quantiles = None
    if quantiles is not None:
        chosen_q = gather_experts(quantiles, selection.indices)  # (B, 2, H, Q)
        present = ~torch.isnan(chosen_q)
        weights = selection.weights[:, :, None, None].expand_as(chosen_q)  # (B, 2, H, Q)
        weights = torch.where(present, weights, torch.zeros_like(weights))
        total = (weights * chosen_q.nan_to_num(0.0)).sum(dim=1)  # (B, H, Q)
        mass = weights.sum(dim=1)  # (B, H, Q); 0 where both experts lack the level
        mixed_quantiles = torch.where(mass > 0, total / mass.clamp_min(1e-30), float("nan"))
    return Mixture(point=point, quantiles=mixed_quantiles, chosen=chosen, selection=selection)


def replay_top2(
    logits: torch.Tensor, points: torch.Tensor, quantiles: torch.Tensor | None = None
) -> Mixture:
    """Top-2 dispatch replayed on cached ``points`` ``(N, E, H)`` with ``logits`` ``(N, E)``."""
    if points.ndim != 3 or points.shape[:2] != logits.shape:
        raise ValueError(
            f"points must have shape (N, E, H) matching logits {tuple(logits.shape)}, "
            f"got {tuple(points.shape)}"
        )
    return mix(select_top2(logits), points, quantiles)


def run_experts(
    experts: Sequence[Expert],
    context: torch.Tensor,
    pred_length: int,
    selected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse dispatch: each expert runs once, on the rows that chose it.

    ``context`` ``(B, L)`` raw values; ``selected`` ``(B, K)`` expert indices per row, or
    None to run every expert on every row. Returns ``points`` ``(B, E, H)`` and
    ``quantiles`` ``(B, E, H, Q)`` on ``context``'s device, NaN where an expert did not
    run (or has no quantiles).
    """
    rows_total = context.shape[0]
    points = torch.full(
        (rows_total, len(experts), pred_length), float("nan"), device=context.device
    )
    quantiles = torch.full(
        (rows_total, len(experts), pred_length, len(QUANTILE_LEVELS)),
        float("nan"),
        device=context.device,
    )
    for index, expert in enumerate(experts):
        if selected is None:
            rows = torch.arange(rows_total, device=context.device)
        else:
            rows = (selected == index).any(dim=1).nonzero().squeeze(1)  # (b,)
            if rows.numel() == 0:
                continue
        with torch.no_grad():
            result = expert.forecast(context[rows], pred_length)
        expected = (rows.numel(), pred_length)
        if tuple(result.point.shape) != expected:
            raise RuntimeError(
                f"expert {expert.name!r} returned point shape {tuple(result.point.shape)}, "
                f"expected {expected}"
            )
        points[rows, index] = result.point.to(points)
        if result.quantiles is not None:
            quantiles[rows, index] = result.quantiles.to(quantiles)
    return points, quantiles


@dataclass(frozen=True)
class Routing:
    """Which experts each row used, as stored next to a forecast.

    ``indices``/``weights`` ``(B, 2)`` and ``probs`` ``(B, E)`` on the CPU; ``expert_keys``
    names the expert axis.
    """

    expert_keys: tuple[str, ...]
    indices: torch.Tensor
    weights: torch.Tensor
    probs: torch.Tensor

    @classmethod
    def from_selection(cls, expert_keys: Sequence[str], selection: Selection) -> Routing:
        """Detach a ``Selection`` into a storable ``Routing``."""
        return cls(
            expert_keys=tuple(expert_keys),
            indices=selection.indices.detach().cpu(),
            weights=selection.weights.detach().cpu(),
            probs=selection.probs.detach().cpu(),
        )

    def records(self) -> list[dict[str, Any]]:
        """One dict per (row, rank): ``row``, ``rank`` (1, 2), ``expert``, ``weight``, ``prob``."""
        rows: list[dict[str, Any]] = []
        for row in range(self.indices.shape[0]):
            for rank in range(self.indices.shape[1]):
                expert = int(self.indices[row, rank])
                rows.append(
                    {
                        "row": row,
                        "rank": rank + 1,
                        "expert": self.expert_keys[expert],
                        "weight": float(self.weights[row, rank]),
                        "prob": float(self.probs[row, expert]),
                    }
                )
        return rows

    def format(self) -> str:
        """Human-readable report, one line per row."""
        lines = []
        for row in range(self.indices.shape[0]):
            parts = [
                f"{self.expert_keys[int(self.indices[row, k])]}={float(self.weights[row, k]):.3f}"
                for k in range(self.indices.shape[1])
            ]
            lines.append(f"row {row}: " + ", ".join(parts))
        return "\n".join(lines)


@dataclass(frozen=True)
class RouterOutput:
    """``point`` ``(B, H)`` and ``quantiles`` ``(B, H, Q)``/None in the input's units."""

    point: torch.Tensor
    quantiles: torch.Tensor | None
    routing: Routing


class MoERouter(nn.Module):
    """The seed's router: a gate picks two experts per row and mixes their forecasts.

    ``MoERouter(input_length, pred_length, device)`` builds the seed's three experts from
    the registry; pass ``experts`` (names or ``Expert`` objects) to choose others. The gate
    (``self.gating``) sees the window scaled by its mean |value| (``moe.scaling``); the
    experts see raw values. With the linear gate only the two chosen experts run, once per
    batch on the rows that chose them; the contextual gate needs every expert's forecast
    before it routes, so there all experts run.
    """

    def __init__(
        self,
        input_length: int,
        pred_length: int,
        device: str | torch.device = "cpu",
        experts: Sequence[str | Expert] | None = None,
        gate: GateKind = "linear",
        *,
        scaling: ScalingMethod = "mean_abs",
        gate_width: int = 32,
        gate_heads: int = 4,
        gate_spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.input_length = input_length
        self.pred_length = pred_length
        self.device = torch.device(device)
        self.scaling: ScalingMethod = scaling
        # None: the seed's three foundation experts (moe.experts.registry.FOUNDATION_EXPERTS)
        self.experts: list[Expert] = resolve_experts(experts, str(self.device))
        self.expert_keys: list[str] = [expert.name for expert in self.experts]
        if gate_spec is not None:  # an artifact's gate dict (any kind, with its settings)
            self.gating = build_gate_from_spec(
                gate_spec, input_length, pred_length, len(self.experts)
            ).to(self.device)
        else:
            self.gating = build_gate(
                gate, input_length, pred_length, len(self.experts), gate_width, gate_heads
            ).to(self.device)

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.input_length:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"router input must have shape (B, {self.input_length}), got {shape}")
        return x.to(device=self.device, dtype=torch.float32)

    def _logits(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        forecasts: torch.Tensor | None,
        history: torch.Tensor | None,
    ) -> torch.Tensor:
        """Gate logits ``(B, E)``. Gates with ``raw_context`` (the feature-pair gate) read the
        unscaled ``x`` with its NaN (their features are scale-free and need the gaps), and
        ``history`` ``(B, E)`` (each expert's past MASE on the series, NaN = none)."""
        if getattr(self.gating, "raw_context", False):
            return self.gating(x, forecasts, history)
        return self.gating(context, forecasts)

    def route(self, x: torch.Tensor, history: torch.Tensor | None = None) -> RouterOutput:
        """Forecast ``x`` ``(B, input_length)`` -> ``RouterOutput`` (point ``(B, H)``, ...).

        ``history`` ``(B, E)``: optional past per-expert MASE for gates that use it.
        """
        x = self._check_input(x)
        scale = window_scale(x, self.scaling)  # (B, 1)
        context = scale_context(x, scale)  # (B, L)
        if self.gating.needs_forecasts:
            points, quantiles = run_experts(self.experts, x, self.pred_length)
            logits = self._logits(x, context, scale_forecasts(points, scale), history)
            selection = select_top2(logits)
        else:
            selection = select_top2(self._logits(x, context, None, history))
            points, quantiles = run_experts(self.experts, x, self.pred_length, selection.indices)
        mixture = mix(selection, points, quantiles)
        return RouterOutput(
            point=mixture.point,
            quantiles=mixture.quantiles,
            routing=Routing.from_selection(self.expert_keys, selection),
        )

    def route_cached(
        self,
        x: torch.Tensor,
        points: torch.Tensor,
        quantiles: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> RouterOutput:
        """Top-2 dispatch replayed on cached forecasts instead of running the experts.

        ``x`` ``(N, input_length)``, ``points`` ``(N, E, H)``, ``quantiles`` ``(N, E, H, Q)``
        and ``history`` ``(N, E)`` in this router's expert order; same routing and mixing
        as ``route``.
        """
        x = self._check_input(x)
        points = points.to(self.device, torch.float32)
        scale = window_scale(x, self.scaling)  # (B, 1)
        context = scale_context(x, scale)  # (B, L)
        forecasts = scale_forecasts(points, scale) if self.gating.needs_forecasts else None
        with torch.no_grad():
            mixture = replay_top2(self._logits(x, context, forecasts, history), points, quantiles)
        return RouterOutput(
            point=mixture.point,
            quantiles=mixture.quantiles,
            routing=Routing.from_selection(self.expert_keys, mixture.selection),
        )

    @overload
    def forward(self, x: torch.Tensor, verbose: Literal[False] = ...) -> torch.Tensor: ...

    @overload
    def forward(self, x: torch.Tensor, verbose: Literal[True]) -> tuple[torch.Tensor, Routing]: ...

    def forward(
        self, x: torch.Tensor, verbose: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, Routing]:
        """``x`` ``(B, input_length)`` -> mixed forecast ``(B, pred_length)``.

        With ``verbose=True`` also prints which experts each row chose and with what
        weights, and returns ``(forecast, routing)`` so the choice can be stored.
        """
        output = self.route(x)
        if verbose:
            print(output.routing.format())
            return output.point, output.routing
        return output.point
