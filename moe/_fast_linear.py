"""Linear-gate training on the cache with hand-written gradients and Adam.

Why: with the seed's batch_size=8, 100,000 windows are 50,000 optimiser steps; autograd
plus ``torch.optim.Adam`` cost about 1 ms per step on a small CPU, a hand-written step a
fraction of that. The forward pass is the router's own ``select_top2``/``mix``; only the
backward pass of the linear gate and Adam's update (torch's single-tensor formula,
default betas/eps, no weight decay) are written out here. ``tests/gate/test_training.py``
checks that this path trains the same gate as autograd.

Gradient chain for one batch (``b`` rows, ``m`` = observed-target mask, ``n = sum(m)``):

* ``loss = sum(huber(point - target) * m) / n`` -> ``d point = clamp(err, -delta, delta) * m / n``
* ``point = sum_k w_k chosen_k`` -> ``d w_k = <d point, chosen_k>``
* ``w_k = t_k / S`` with ``t = probs[indices]``, ``S = sum t`` -> ``d t_k = (d w_k - <d w, w>) / S``
* balance ``lambda * E * sum_e f_e mean_b(probs_e)`` -> ``d probs_e += lambda * E * f_e / b``
* softmax -> ``d logits = p * (d p - <d p, p>)``; ``logits = [context, 1] @ theta.T``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from moe.gates import LinearGate
from moe.router import mix, select_top2

__all__ = ["FastLinearTrainer"]


def _nones() -> Iterator[None]:
    while True:
        yield None


_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam defaults


class FastLinearTrainer:
    """Owns the packed parameters ``theta`` ``(E, L + 1)`` = ``[weight | bias]`` and Adam state.

    ``context`` ``(N, L)``, ``target`` ``(N, H)`` (NaN already zeroed), ``observed`` ``(N, H)``
    float 0/1, ``points`` ``(N, E, H)``: all scaled, on one device.
    """

    def __init__(
        self,
        gate: LinearGate,
        context: torch.Tensor,
        target: torch.Tensor,
        observed: torch.Tensor,
        points: torch.Tensor,
        lr: float,
        huber_delta: float,
        balance_weight: float,
    ) -> None:
        self.gate = gate
        ones = torch.ones(context.shape[0], 1, dtype=context.dtype, device=context.device)
        self.context = torch.cat([context, ones], dim=1)  # (N, L + 1)
        self.target = target
        self.observed = observed.to(context.dtype)
        self.has_missing = bool((observed == 0).any())
        self.points = points
        self.lr = lr
        self.delta = huber_delta
        self.balance_weight = balance_weight
        with torch.no_grad():
            self.theta = torch.cat([gate.linear.weight, gate.linear.bias[:, None]], dim=1).clone()
        self.exp_avg = torch.zeros_like(self.theta)
        self.exp_avg_sq = torch.zeros_like(self.theta)
        self.steps = 0

    def write_back(self) -> None:
        """Copy ``theta`` into the gate's ``nn.Linear``."""
        with torch.no_grad():
            self.gate.linear.weight.copy_(self.theta[:, :-1])
            self.gate.linear.bias.copy_(self.theta[:, -1])

    def epoch(self, order: torch.Tensor, batch_size: int) -> None:
        """One pass over rows ``order`` (already shuffled) in batches of ``batch_size``."""
        # inference_mode: no autograd bookkeeping at all; each step is ~50 tiny kernels, so
        # per-call overhead is the whole cost.
        with torch.inference_mode():
            context = self.context[order]
            target = self.target[order]
            points = self.points[order]
            observed = self.observed[order] if self.has_missing else None
            # split once per epoch: a list of views is cheaper than four slices per step
            batches = zip(
                context.split(batch_size),
                target.split(batch_size),
                observed.split(batch_size) if observed is not None else _nones(),
                points.split(batch_size),
                strict=False,  # _nones() is endless; the tensors split alike
            )
            for batch_context, batch_target, batch_observed, batch_points in batches:
                self._adam(self.gradient(batch_context, batch_target, batch_observed, batch_points))
        self.write_back()

    def gradient(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        observed: torch.Tensor | None,
        points: torch.Tensor,
    ) -> torch.Tensor:
        """d loss / d theta ``(E, L + 1)`` for one batch (chain in the module docstring).

        ``context`` ``(b, L + 1)`` (with the ones column), ``target`` ``(b, H)``, ``observed``
        ``(b, H)`` or None when every target point is observed, ``points`` ``(b, E, H)``.
        """
        n_experts = points.shape[1]
        rows = context.shape[0]
        selection = select_top2(context @ self.theta.T)  # logits (b, E)
        mixture = mix(selection, points)
        grad_point = (mixture.point - target).clamp_(-self.delta, self.delta)  # (b, H)
        if observed is None:
            grad_point /= target.numel()
        else:
            grad_point.mul_(observed).div_(observed.sum().clamp_min(1.0))
        grad_weights = torch.bmm(mixture.chosen, grad_point[:, :, None]).squeeze(2)  # (b, 2)
        top = selection.probs.gather(1, selection.indices)  # (b, 2)
        grad_top = (grad_weights - (grad_weights * selection.weights).sum(1, keepdim=True)).div_(
            top.sum(1, keepdim=True)
        )
        grad_probs = torch.zeros_like(selection.probs).scatter_(1, selection.indices, grad_top)
        if self.balance_weight > 0:
            share = torch.bincount(selection.indices.reshape(-1), minlength=n_experts)  # (E,)
            grad_probs.add_(
                share, alpha=self.balance_weight * n_experts / rows / selection.indices.numel()
            )
        probs = selection.probs  # (b, E)
        grad_logits = grad_probs.sub_((grad_probs * probs).sum(1, keepdim=True)).mul_(probs)
        return grad_logits.T @ context  # (E, L + 1)

    def _adam(self, grad: torch.Tensor) -> None:
        self.steps += 1
        self.exp_avg.lerp_(grad, 1 - _BETA1)
        self.exp_avg_sq.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        step_size = self.lr / (1 - _BETA1**self.steps)
        bias_correction2_sqrt = math.sqrt(1 - _BETA2**self.steps)
        denom = self.exp_avg_sq.sqrt().div_(bias_correction2_sqrt).add_(_EPS)
        self.theta.addcdiv_(self.exp_avg, denom, value=-step_size)
