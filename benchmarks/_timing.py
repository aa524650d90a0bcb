"""Timing two implementations of the same call on a shared, noisy machine."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

__all__ = ["time_pair"]


def time_pair(
    first: Callable[[], torch.Tensor],
    second: Callable[[], torch.Tensor],
    repeats: int,
    device: str,
    warmup: bool = True,
) -> tuple[tuple[float, torch.Tensor], tuple[float, torch.Tensor]]:
    """Best-of-``repeats`` seconds of two calls, interleaved so load drift hits both alike.

    The minimum, not the mean: on a shared machine other processes only ever add time.
    One untimed call of each first (unless ``warmup=False``). Returns ``(seconds, output)``
    of each call, the output being its last result.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    calls = (first, second)
    outputs = [call() for call in calls] if warmup else [torch.empty(0), torch.empty(0)]
    seconds: list[list[float]] = [[], []]
    for _ in range(repeats):
        for index, call in enumerate(calls):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            outputs[index] = call()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds[index].append(time.perf_counter() - start)
    return (min(seconds[0]), outputs[0]), (min(seconds[1]), outputs[1])
