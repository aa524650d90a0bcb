"""A trained global expert: one small MLP for every series, on scaled windows.

Unlike the frozen experts it is trained by the retrain itself (``train_global_mlp``), on
the training windows only, and saved as a checkpoint the registry loads like any other
(``ExpertConfig.checkpoint`` = the ``.pt`` path; ``torch.load(weights_only=True)``). Its
``cache_key`` holds a fingerprint of the weights, so forecasts of different weights are
never mixed in the cache and a retrain that reproduces the same weights reuses them.

Scaling (per window, so one network serves series of any level and scale): the context is
shifted by its last observed value and divided by its lag-1 naive MAE
(``moe.intervals.interval_scale``); the network predicts the target in the same units, so
its L1 loss is a (lag-1) MASE. Missing values are filled (forward, then backward) and the
observed mask is a second input, so NaN is handled. Contexts longer than the trained
``input_length`` use their newest points; shorter ones are left-padded as missing.

Network: ``Linear(2L, width) -> ReLU -> Linear(width, width) -> ReLU -> Linear(width, H)``.
It gives point forecasts only (no quantile levels); the pipeline fills its intervals from
its residuals like any expert without levels (``moe.intervals``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moe.experts._loading import check_inputs
from moe.experts.base import ExpertCapabilities, ExpertConfig, ExpertForecast, ExpertLoadError
from moe.intervals import interval_scale

__all__ = [
    "NAME",
    "GlobalMLPConfig",
    "GlobalMLPForecaster",
    "train_global_mlp",
    "save_global_mlp",
    "build",
]

NAME = "global_mlp"
#: Bumped when the scaling or the network changes (part of the cache key and checkpoint).
VERSION = 1


@dataclass(frozen=True)
class GlobalMLPConfig:
    """Training settings (defaults measured to fit a retrain's time budget on 2 cores)."""

    width: int = 64
    epochs: int = 60
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_seconds: float = 120.0  # stop early past this wall time (an epoch always finishes)


def _prepare(context: np.ndarray, input_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(B, L')`` raw -> network input ``(B, 2L)``, last value ``(B,)``, scale ``(B,)``."""
    rows = np.asarray(context, np.float64)
    if rows.shape[1] >= input_length:
        rows = rows[:, -input_length:]
    else:
        pad = np.full((rows.shape[0], input_length - rows.shape[1]), np.nan)
        rows = np.concatenate([pad, rows], axis=1)
    observed = ~np.isnan(rows)
    filled = rows.copy()
    for column in range(1, input_length):  # forward fill
        gap = np.isnan(filled[:, column])
        filled[gap, column] = filled[gap, column - 1]
    for column in range(input_length - 2, -1, -1):  # backward fill the leading gap
        gap = np.isnan(filled[:, column])
        filled[gap, column] = filled[gap, column + 1]
    filled = np.nan_to_num(filled, nan=0.0)
    last = filled[:, -1]
    scale = interval_scale(rows)
    scaled = (filled - last[:, None]) / scale[:, None]
    inputs = np.concatenate([np.clip(scaled, -50, 50), observed.astype(np.float64)], axis=1)
    return inputs, last, scale


def _network(input_length: int, horizon: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2 * input_length, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, horizon),
    )


def _fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class GlobalMLPForecaster:
    """The trained MLP behind the ``Expert`` protocol (point forecasts, CPU or GPU)."""

    name = NAME

    def __init__(
        self,
        network: nn.Sequential,
        input_length: int,
        horizon: int,
        width: int,
        device: str = "cpu",
        batch_size: int = 4096,
    ) -> None:
        self.input_length = input_length
        self.horizon = horizon
        self.width = width
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.fingerprint = _fingerprint(self.network.state_dict())
        self.checkpoint: str | None = None  # the file it was loaded from, when it was
        self.capabilities = ExpertCapabilities(
            max_context=input_length,
            min_context=1,
            native_horizon=horizon,
            quantile_levels=(),
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        """``global_mlp|v=<n>|L=<L>|H=<H>|width=<w>|weights=<sha256 prefix>``."""
        return (
            f"{NAME}|v={VERSION}|L={self.input_length}|H={self.horizon}|width={self.width}"
            f"|weights={self.fingerprint}"
        )

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """``context`` ``(B, L)`` -> ``point`` ``(B, horizon)``; quantiles None.

        Horizons beyond the trained one repeat the network on its own output
        (autoregressive), rows without any observation get NaN.
        """
        check_inputs(context, horizon, self.name)
        rows = context.detach().cpu().double().numpy()  # a copy: the input is never written
        empty = np.isnan(rows).all(axis=1)
        produced: list[np.ndarray] = []
        history = rows
        remaining = horizon
        while remaining > 0:
            step = self._predict(history)  # (B, H_trained)
            produced.append(step[:, :remaining])
            history = np.concatenate([history, step], axis=1)
            remaining -= step.shape[1]
        point = np.concatenate(produced, axis=1)
        point[empty] = np.nan
        return ExpertForecast(
            point=torch.from_numpy(point.astype(np.float32)).to(context.device), quantiles=None
        )

    def _predict(self, rows: np.ndarray) -> np.ndarray:
        inputs, last, scale = _prepare(rows, self.input_length)
        outputs = np.empty((rows.shape[0], self.horizon))
        with torch.no_grad():
            for begin in range(0, rows.shape[0], self.batch_size):
                block = torch.from_numpy(inputs[begin : begin + self.batch_size]).float()
                result = self.network(block.to(self.device)).double().cpu().numpy()
                outputs[begin : begin + self.batch_size] = result
        return last[:, None] + scale[:, None] * outputs


def train_global_mlp(
    context: np.ndarray, target: np.ndarray, config: GlobalMLPConfig = GlobalMLPConfig()
) -> tuple[GlobalMLPForecaster, dict[str, Any]]:
    """Train on windows ``context`` ``(N, L)`` -> ``target`` ``(N, H)`` (NaN targets are
    left out of the loss); returns the expert and a training report.

    Seeded and on the CPU (with ``torch.random.fork_rng``, the caller's RNG is untouched),
    so the same windows give the same weights and the same ``cache_key``.
    """
    if context.ndim != 2 or target.ndim != 2 or context.shape[0] != target.shape[0]:
        raise ValueError(
            f"context (N, L) and target (N, H) must share N, got {context.shape}, {target.shape}"
        )
    if context.shape[0] == 0:
        raise ValueError("no training windows for the global expert")
    input_length, horizon = context.shape[1], target.shape[1]
    inputs, last, scale = _prepare(context, input_length)
    goal = (np.asarray(target, np.float64) - last[:, None]) / scale[:, None]
    observed = ~np.isnan(goal)
    goal = np.clip(np.nan_to_num(goal, nan=0.0), -50, 50)
    x = torch.from_numpy(inputs).float()
    y = torch.from_numpy(goal).float()
    mask = torch.from_numpy(observed).float()
    started = time.perf_counter()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = _network(input_length, horizon, config.width)
        optimiser = torch.optim.AdamW(
            network.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        generator = torch.Generator().manual_seed(config.seed)
        for _ in range(config.epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            total = 0.0
            for begin in range(0, x.shape[0], config.batch_size):
                rows = order[begin : begin + config.batch_size]
                error = (network(x[rows]) - y[rows]).abs() * mask[rows]
                loss = error.sum() / mask[rows].sum().clamp_min(1.0)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * rows.numel()
            losses.append(total / x.shape[0])
            if time.perf_counter() - started > config.max_seconds:
                break
    expert = GlobalMLPForecaster(network, input_length, horizon, config.width)
    report = {
        "windows": int(x.shape[0]),
        "epochs": len(losses),
        "train_mae_lag1_units": losses[-1] if losses else None,
        "seconds": time.perf_counter() - started,
        "fingerprint": expert.fingerprint,
    }
    return expert, report


def save_global_mlp(expert: GlobalMLPForecaster, path: str | Path) -> Path:
    """Write the checkpoint (plain data and tensors) via a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": NAME,
        "version": VERSION,
        "input_length": expert.input_length,
        "horizon": expert.horizon,
        "width": expert.width,
        "state": {k: v.detach().cpu().contiguous() for k, v in expert.network.state_dict().items()},
        "fingerprint": expert.fingerprint,
    }
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def build(config: ExpertConfig) -> GlobalMLPForecaster:
    """Load the trained expert from ``config.checkpoint`` (a ``.pt`` from ``save_global_mlp``)."""
    if config.checkpoint is None:
        raise ExpertLoadError(
            f"expert {NAME!r} is trained by the retrain; build it from its checkpoint "
            "(ExpertConfig(checkpoint='<store>/experts/global_mlp-<fingerprint>.pt'))"
        )
    path = Path(config.checkpoint)
    if not path.is_file():
        raise ExpertLoadError(f"expert {NAME!r}: checkpoint {str(path)!r} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ExpertLoadError(f"expert {NAME!r}: cannot read {str(path)!r}: {error}") from error
    if not isinstance(raw, dict) or raw.get("name") != NAME or raw.get("version") != VERSION:
        raise ExpertLoadError(
            f"expert {NAME!r}: {str(path)!r} is not a version-{VERSION} {NAME} checkpoint"
        )
    network = _network(int(raw["input_length"]), int(raw["horizon"]), int(raw["width"]))
    network.load_state_dict(raw["state"])
    expert = GlobalMLPForecaster(
        network,
        int(raw["input_length"]),
        int(raw["horizon"]),
        int(raw["width"]),
        device=config.device,
        batch_size=config.batch_size,
    )
    if expert.fingerprint != raw.get("fingerprint"):
        raise ExpertLoadError(f"expert {NAME!r}: {str(path)!r} weights do not match fingerprint")
    expert.checkpoint = str(path)
    return expert
