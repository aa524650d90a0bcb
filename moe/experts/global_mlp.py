"""A trained global expert: one MLP for every series, on level-scaled windows.

Unlike the frozen experts it is trained by the retrain itself (``train_global_mlp``), on
the training windows only, and saved as a checkpoint the registry loads like any other
(``ExpertConfig.checkpoint`` = the ``.pt`` path; ``torch.load(weights_only=True)``). Its
``cache_key`` holds a fingerprint of the weights, so forecasts of different weights are
never mixed in the cache and a retrain that reproduces the same weights reuses them.

Scaling (per window, so one network serves series of any level): the newest
``input_length`` points (a few seasons, not the whole history: measured better) are divided
by the window's level, the mean |value| of its last ``level_points`` observations, and the
network predicts the target in the same units. The loss is each window's mean absolute
error times ``level / MASE scale``, i.e. the error in MASE units, the metric the gate and
the benchmark score (plain level units over-weight noisy series). Missing values are
filled (forward, then backward) and the observed mask is a second input, so NaN is handled.
Shorter contexts are left-padded as missing.

Network: ``depth`` hidden ``Linear -> ReLU`` layers of ``width`` units, then ``Linear(width,
H)``, trained with Adam on a one-cycle learning rate. The expert is an ensemble of such
networks, one per lookback (``GlobalMLPConfig.lookbacks``, 2, 3 and 4 horizons by default,
each with its own seed), whose forecasts are averaged: one network's forecasts move by
1-1.5% MASE with the seed alone, and the average of three lookbacks was about 1% better on
Tourism and M1 (docs/ACCURACY.md, "global expert ensemble"). Version 1 (whole-history input,
lag-1 scaling, 64 units) scored +22% MASE vs AutoTheta on M3 monthly; see docs/ACCURACY.md.
It gives point forecasts only (no quantile levels); the pipeline fills its intervals from
its residuals like any expert without levels (``moe.intervals``).
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moe.experts._loading import check_inputs, read_trained_checkpoint, write_checkpoint
from moe.experts.base import ExpertCapabilities, ExpertConfig, ExpertForecast, ExpertLoadError
from moe.metrics import positive_scale

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
VERSION = 2
#: Inputs and targets in level units are clipped to this (a guard against near-zero levels).
_CLIP = 50.0
#: Largest loss weight (level / MASE scale) of one window, so a flat series cannot dominate.
_MAX_WEIGHT = 1e3


@dataclass(frozen=True)
class GlobalMLPConfig:
    """Training settings. Defaults measured on M3, Tourism and M1 monthly (development
    split, docs/ACCURACY.md); one fit of ~200k windows takes about 3 min on one CPU core."""

    #: One network per lookback, in multiples of the horizon; their forecasts are averaged.
    lookbacks: tuple[int, ...] = (2, 3, 4)
    input_length: int | None = None  # longest lookback allowed (the store's context); None: any
    width: int = 512
    depth: int = 3
    epochs: int = 10
    min_steps: int = 2000  # small stores get more epochs: at least this many batches
    batch_size: int = 1024
    lr: float = 1e-3
    level_points: int = 12
    seed: int = 0
    #: Time budget per member. Epochs are planned before training from a timed probe, so a
    #: budget that binds still gives a whole one-cycle schedule (fewer epochs, annealed);
    #: a fit that overruns twice the budget anyway (a machine loaded mid-fit) stops there.
    max_seconds: float = 600.0

    def __post_init__(self) -> None:
        for field in ("width", "depth", "epochs", "min_steps", "batch_size", "level_points"):
            value = getattr(self, field)
            if value < 1:
                raise ValueError(f"GlobalMLPConfig.{field} must be >= 1, got {value}")
        if self.input_length is not None and self.input_length < 1:
            raise ValueError(f"GlobalMLPConfig.input_length must be >= 1, got {self.input_length}")
        if not self.lookbacks or min(self.lookbacks) < 1:
            raise ValueError(
                f"GlobalMLPConfig.lookbacks must be positive multiples of the horizon, got "
                f"{self.lookbacks}"
            )

    def member_lengths(self, horizon: int) -> list[int]:
        """Each member network's lookback in points: ``lookback x horizon``, capped at
        ``input_length``."""
        cap = self.input_length or max(self.lookbacks) * horizon
        return [min(multiple * horizon, cap) for multiple in self.lookbacks]


def _newest(context: np.ndarray, input_length: int) -> np.ndarray:
    """``(B, L')`` -> its newest ``input_length`` points ``(B, input_length)``, NaN-padded."""
    rows = np.asarray(context, np.float64)
    if rows.shape[1] >= input_length:
        return rows[:, rows.shape[1] - input_length :]
    pad = np.full((rows.shape[0], input_length - rows.shape[1]), np.nan)
    return np.concatenate([pad, rows], axis=1)


def window_level(rows: np.ndarray, level_points: int) -> np.ndarray:
    """``(B, L)`` -> ``(B,)`` positive level: mean |value| of the last ``level_points``
    observations of each row; the whole row's mean |value| where that is 0 or missing; 1
    where the row has nothing else."""
    newest = np.abs(rows[:, -level_points:])
    whole = np.abs(rows)
    with warnings.catch_warnings():  # an all-missing row: "Mean of empty slice", handled
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmean(newest, axis=1)
        bad = ~(np.isfinite(level) & (level > 0))
        if bad.any():
            level[bad] = np.nanmean(whole[bad], axis=1)
    return np.where(np.isfinite(level) & (level > 0), level, 1.0)


def _prepare(
    context: np.ndarray, input_length: int, level_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, L')`` raw -> network input ``(B, 2 input_length)`` and level ``(B,)``."""
    rows = _newest(context, input_length)
    observed = ~np.isnan(rows)
    filled = rows.copy()
    for column in range(1, input_length):  # forward fill
        gap = np.isnan(filled[:, column])
        filled[gap, column] = filled[gap, column - 1]
    for column in range(input_length - 2, -1, -1):  # backward fill the leading gap
        gap = np.isnan(filled[:, column])
        filled[gap, column] = filled[gap, column + 1]
    filled = np.nan_to_num(filled, nan=0.0)
    level = window_level(rows, level_points)
    scaled = np.clip(filled / level[:, None], -_CLIP, _CLIP)
    return np.concatenate([scaled, observed.astype(np.float64)], axis=1), level


def _network(input_length: int, horizon: int, width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    features = 2 * input_length
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.ReLU()]
        features = width
    layers.append(nn.Linear(features, horizon))
    return nn.Sequential(*layers)


def _fingerprint(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _members_fingerprint(members: Sequence[tuple[int, nn.Sequential]]) -> str:
    """One network: its weights' fingerprint (as checkpoints before ensembles had it, so
    their cache keys still hit); several: a digest of each member's length and weights."""
    prints = [_fingerprint(network.state_dict()) for _, network in members]
    if len(members) == 1:
        return prints[0]
    joined = "+".join(f"{length}:{fp}" for (length, _), fp in zip(members, prints, strict=True))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


class GlobalMLPForecaster:
    """The trained MLP ensemble behind the ``Expert`` protocol (point forecasts, CPU or
    GPU): ``members`` = ``(input_length, network)`` per network, forecasts averaged."""

    name = NAME

    def __init__(
        self,
        members: Sequence[tuple[int, nn.Sequential]],
        horizon: int,
        width: int,
        depth: int,
        level_points: int,
        device: str = "cpu",
        batch_size: int = 4096,
    ) -> None:
        if not members:
            raise ValueError("GlobalMLPForecaster needs at least one member network")
        self.input_lengths = tuple(int(length) for length, _ in members)
        self.input_length = max(self.input_lengths)  # the longest context any member reads
        self.horizon = horizon
        self.width = width
        self.depth = depth
        self.level_points = level_points
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.networks = [network.to(self.device).eval() for _, network in members]
        for network in self.networks:
            for parameter in network.parameters():
                parameter.requires_grad_(False)
        self.fingerprint = _members_fingerprint(members)  # .to() moved these in place
        self.checkpoint: str | None = None  # the file it was loaded from, when it was
        self.checkpoint_sha256: str | None = None  # ... and the SHA-256 of its bytes
        self.capabilities = ExpertCapabilities(
            max_context=self.input_length,
            min_context=1,
            native_horizon=horizon,
            quantile_levels=(),
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        """``global_mlp|v=<n>|L=<L[+L...]>|H=<H>|width=<w>|depth=<d>|level=<k>|weights=<sha256
        prefix>``; ``L`` lists every member's lookback."""
        lengths = "+".join(str(length) for length in self.input_lengths)
        return (
            f"{NAME}|v={VERSION}|L={lengths}|H={self.horizon}|width={self.width}"
            f"|depth={self.depth}|level={self.level_points}|weights={self.fingerprint}"
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
        """``(B, L')`` raw -> ``(B, H_trained)``: the members' mean forecast."""
        outputs = np.zeros((rows.shape[0], self.horizon))
        for length, network in zip(self.input_lengths, self.networks, strict=True):
            inputs, level = _prepare(rows, length, self.level_points)
            with torch.no_grad():
                for begin in range(0, rows.shape[0], self.batch_size):
                    end = begin + self.batch_size
                    block = torch.from_numpy(inputs[begin:end]).float().to(self.device)
                    result = network(block).double().cpu().numpy()
                    outputs[begin:end] += level[begin:end, None] * result
        return outputs / len(self.networks)


def _fit_network(
    inputs: np.ndarray,
    goal: np.ndarray,
    observed: np.ndarray,
    weight: np.ndarray,
    config: GlobalMLPConfig,
    seed: int,
) -> tuple[nn.Sequential, list[float], int]:
    """One member: ``inputs`` ``(N, 2 L)`` -> ``goal`` ``(N, H)`` in level units, loss
    ``|error| x observed`` averaged per window times ``weight`` ``(N,)`` (MASE units).
    Returns the network, each epoch's mean loss and the epochs wanted without a budget."""
    x = torch.from_numpy(inputs).float()
    y = torch.from_numpy(goal).float()
    mask = torch.from_numpy(observed).float()
    w = torch.from_numpy(weight).float()
    losses: list[float] = []
    steps_per_epoch = -(-x.shape[0] // config.batch_size)
    wanted = max(config.epochs, -(-config.min_steps // steps_per_epoch))
    epochs = planned_epochs(
        wanted, steps_per_epoch, config.max_seconds, _seconds_per_step(x, y, mask, w, config)
    )
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = _network(inputs.shape[1] // 2, goal.shape[1], config.width, config.depth)
        optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimiser, max_lr=config.lr, total_steps=epochs * steps_per_epoch
        )
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(x.shape[0], generator=generator)
            total = 0.0
            for begin in range(0, x.shape[0], config.batch_size):
                rows = order[begin : begin + config.batch_size]
                loss = _batch_loss(network, x[rows], y[rows], mask[rows], w[rows])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                total += float(loss.detach()) * rows.numel()
            losses.append(total / x.shape[0])
            if time.perf_counter() - started > 2 * config.max_seconds:
                break
    return network, losses, wanted


def _batch_loss(
    network: nn.Sequential, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Mean over the batch of each window's mean |error| (level units) times its weight
    ``w`` ``(B,)``: MASE units. ``x`` ``(B, 2 L)``, ``y`` and ``mask`` ``(B, H)``."""
    per_window = ((network(x) - y).abs() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
    return (per_window * w).mean()


#: Optimiser steps timed before a fit to plan its epochs (a few seconds at full size).
_PROBE_STEPS = 5


def planned_epochs(
    wanted: int, steps_per_epoch: int, max_seconds: float, seconds_per_step: float
) -> int:
    """The epochs a fit runs: ``wanted``, or fewer (at least one) when ``wanted`` would
    take longer than ``max_seconds`` at ``seconds_per_step``."""
    if not math.isfinite(max_seconds) or seconds_per_step <= 0:
        return wanted
    affordable = int(max_seconds // (seconds_per_step * steps_per_epoch))
    return max(1, min(wanted, affordable))


def _seconds_per_step(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, w: torch.Tensor, config: GlobalMLPConfig
) -> float:
    """Wall seconds of one optimiser step, timed on a throwaway network (the fit's own
    network, RNG and schedule are untouched, so timing never changes the weights)."""
    if not math.isfinite(config.max_seconds):
        return 0.0
    with torch.random.fork_rng(devices=[]):
        network = _network(x.shape[1] // 2, y.shape[1], config.width, config.depth)
        optimiser = torch.optim.Adam(network.parameters(), lr=config.lr)
        rows = slice(0, config.batch_size)
        timings = []
        for _ in range(_PROBE_STEPS + 1):  # the first step warms up allocations
            begun = time.perf_counter()
            loss = _batch_loss(network, x[rows], y[rows], mask[rows], w[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            timings.append(time.perf_counter() - begun)
    return float(np.median(timings[1:]))


def train_global_mlp(
    context: np.ndarray,
    target: np.ndarray,
    config: GlobalMLPConfig = GlobalMLPConfig(),
    season_lengths: np.ndarray | int = 1,
) -> tuple[GlobalMLPForecaster, dict[str, Any]]:
    """Train on windows ``context`` ``(N, L)`` -> ``target`` ``(N, H)`` (NaN targets are
    left out of the loss); returns the expert and a training report.

    One network per ``config.lookbacks`` entry (member ``i`` seeded ``config.seed + i``),
    each reading the newest ``lookback x H`` points (at most ``config.input_length``).
    ``season_lengths`` (an int or ``(N,)``) sets each window's MASE scale (the
    seasonal-naive MAE of its whole context, ``moe.metrics.positive_scale``), which weighs
    its loss. Seeded and on the CPU (with ``torch.random.fork_rng``, the caller's RNG is
    untouched), so the same windows give the same weights and the same ``cache_key``.
    ``config.max_seconds`` bounds each member's fit: when it binds, the member runs fewer
    epochs (planned from a timed probe, so its schedule still anneals) and the report's
    ``epochs_cut_for_time`` says by how many; only then do the weights depend on the
    machine's speed.
    """
    if context.ndim != 2 or target.ndim != 2 or context.shape[0] != target.shape[0]:
        raise ValueError(
            f"context (N, L) and target (N, H) must share N, got {context.shape}, {target.shape}"
        )
    if context.shape[0] == 0:
        raise ValueError("no training windows for the global expert")
    horizon = target.shape[1]
    context = np.asarray(context, np.float64)
    scale = positive_scale(context, season_lengths)  # (N,)
    started = time.perf_counter()
    members: list[tuple[int, nn.Sequential]] = []
    epochs: list[int] = []
    wanted: list[int] = []  # epochs each member would have run without the time budget
    final_losses: list[float] = []
    for index, input_length in enumerate(config.member_lengths(horizon)):
        inputs, level = _prepare(context, input_length, config.level_points)
        goal = np.asarray(target, np.float64) / level[:, None]
        observed = ~np.isnan(goal)
        goal = np.clip(np.nan_to_num(goal, nan=0.0), -_CLIP, _CLIP)
        weight = np.clip(level / scale, 0.0, _MAX_WEIGHT)
        network, losses, planned = _fit_network(
            inputs, goal, observed, weight, config, seed=config.seed + index
        )
        members.append((input_length, network))
        epochs.append(len(losses))
        wanted.append(planned)
        if losses:
            final_losses.append(losses[-1])
    expert = GlobalMLPForecaster(members, horizon, config.width, config.depth, config.level_points)
    report = {
        "windows": int(context.shape[0]),
        "members": len(members),
        "epochs": epochs,
        "epochs_cut_for_time": [want - done for want, done in zip(wanted, epochs, strict=True)],
        "train_mase": float(np.mean(final_losses)) if final_losses else None,
        "seconds": time.perf_counter() - started,
        "fingerprint": expert.fingerprint,
    }
    return expert, report


def save_global_mlp(expert: GlobalMLPForecaster, path: str | Path) -> Path:
    """Write the checkpoint (plain data and tensors) via a temporary file renamed into place."""
    payload = {
        "name": NAME,
        "version": VERSION,
        "horizon": expert.horizon,
        "width": expert.width,
        "depth": expert.depth,
        "level_points": expert.level_points,
        "members": [
            {
                "input_length": length,
                "state": {
                    k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()
                },
            }
            for length, network in zip(expert.input_lengths, expert.networks, strict=True)
        ],
        "fingerprint": expert.fingerprint,
    }
    return write_checkpoint(payload, path)


def build(config: ExpertConfig) -> GlobalMLPForecaster:
    """Load the trained expert from ``config.checkpoint`` (a ``.pt`` from ``save_global_mlp``)."""
    checkpoint = read_trained_checkpoint(config, NAME, VERSION)
    raw, path = checkpoint.payload, checkpoint.path
    try:
        shape = {k: int(raw[k]) for k in ("horizon", "width", "depth", "level_points")}
        # Checkpoints written before ensembles hold one network at the top level.
        stored = raw["members"] if "members" in raw else [raw]
        members = []
        for member in stored:
            length = int(member["input_length"])
            network = _network(length, shape["horizon"], shape["width"], shape["depth"])
            network.load_state_dict(member["state"])
            members.append((length, network))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ExpertLoadError(
            f"expert {NAME!r}: {str(path)!r} is not a complete {NAME} checkpoint: {error}"
        ) from error
    expert = GlobalMLPForecaster(
        members, **shape, device=config.device, batch_size=config.batch_size
    )
    if expert.fingerprint != raw.get("fingerprint"):
        raise ExpertLoadError(f"expert {NAME!r}: {str(path)!r} weights do not match fingerprint")
    expert.checkpoint = str(path)
    expert.checkpoint_sha256 = checkpoint.sha256
    return expert
