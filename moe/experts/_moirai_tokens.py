"""Moirai-MoE's patched sequences: a ``(b, L)`` batch with NaN -> tokens for ``forward``.

The data steps uni2ts takes for one univariate series per row, done on a whole tensor:
left padding to a multiple of the patch size, a causal mean fill of unobserved points,
uni2ts' ``sample_id``/``time_id`` numbering, and the autoregressive append of sampled
patches. ``moe.experts.moirai`` states the policy in words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Tokens", "append", "fields", "repeat", "tokenize"]


@dataclass(frozen=True)
class Tokens:
    """Patched sequences as ``MoiraiMoEModule.forward`` takes them (n sequences, T patches)."""

    target: torch.Tensor  # (n, T, P) float32, unobserved points filled
    observed: torch.Tensor  # (n, T, P) bool
    sample_id: torch.Tensor  # (n, T) long, 0 for a patch that is all padding
    time_id: torch.Tensor  # (n, T) long


def tokenize(rows: torch.Tensor, patch: int) -> Tokens:
    """Rows ``(b, L)`` with NaN -> left-padded patches ``(b, T, P)``, ``T = ceil(L / P)``."""
    observed = ~torch.isnan(rows)  # (b, L)
    started = observed.cumsum(dim=1) > 0  # (b, L): False on the leading NaN run (padding)
    filled = _causal_mean_fill(rows, observed)
    filled = torch.where(started, filled, torch.zeros_like(filled))
    pad = -rows.shape[1] % patch
    filled = F.pad(filled, (pad, 0)).unflatten(1, (-1, patch))  # (b, T, P)
    observed = F.pad(observed, (pad, 0), value=False).unflatten(1, (-1, patch))
    real = F.pad(started, (pad, 0), value=False).unflatten(1, (-1, patch))
    sample_id = real.any(dim=2).long()  # (b, T)
    # uni2ts numbers patches from the first one holding an observation; earlier ones share 0
    seen = observed.any(dim=2).long().cummax(dim=1).values
    time_id = (seen.cumsum(dim=1) - 1).clamp(min=0)  # (b, T)
    return Tokens(filled, observed, sample_id, time_id)


def _causal_mean_fill(rows: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """``NaN`` -> mean of the observed points before it (float64 sums); ``(b, L)`` -> ``(b, L)``."""
    values = torch.where(observed, rows, torch.zeros_like(rows)).double()
    running_mean = values.cumsum(dim=1) / observed.cumsum(dim=1).clamp(min=1)
    return torch.where(observed, rows, running_mean.to(rows.dtype))


def repeat(tokens: Tokens, times: int) -> Tokens:
    """Each sequence ``times`` times in a row: ``(n, ...)`` -> ``(n * times, ...)``."""
    return Tokens(*(t.repeat_interleave(times, dim=0) for t in fields(tokens)))


def append(context: Tokens, patches: torch.Tensor, last_time: torch.Tensor) -> Tokens:
    """Context ``(n, T, P)`` + sampled patches ``(n, k, P)`` as observed data -> ``(n, T+k, P)``."""
    n, k, _ = patches.shape
    ones = torch.ones(n, k, dtype=torch.long, device=patches.device)
    times = last_time[:, None] + torch.arange(1, k + 1, device=patches.device)  # (n, k)
    return Tokens(
        torch.cat([context.target, patches], dim=1),
        torch.cat([context.observed, torch.ones_like(patches, dtype=torch.bool)], dim=1),
        torch.cat([context.sample_id, ones], dim=1),
        torch.cat([context.time_id, times], dim=1),
    )


def fields(tokens: Tokens) -> tuple[torch.Tensor, ...]:
    """The four tensors in ``Tokens``' field order (to slice or repeat them alike)."""
    return (tokens.target, tokens.observed, tokens.sample_id, tokens.time_id)
