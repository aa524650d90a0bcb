"""A trained global expert: gradient-boosted trees for every series, on level-scaled windows.

The tree counterpart of ``global_mlp`` (docs/ACCURACY.md "accuracy16": on the development
split of M3, Tourism and M1 monthly it beat fracast alone by 0.4-13% and moved the mean of
AutoETS, AutoTheta, AutoCES and fracast by -0.6 / -3.5 / -2.4% when added to it). Like
``global_mlp`` it is trained by the retrain on the training windows only and saved as a
checkpoint the registry loads (``ExpertConfig.checkpoint`` = the ``.pt`` path,
``torch.load(weights_only=True)``); its ``cache_key`` holds a fingerprint of the trees.

Inputs: the newest ``input_points`` points of a window (NaN where missing: the trees route
missing values themselves), divided by the window's level (``global_mlp.window_level``: the
mean |value| of its last ``level_points`` observations). One model per step ahead (direct
strategy), scikit-learn's ``HistGradientBoostingRegressor`` with the absolute-error loss,
predicting the target in level units. Point forecasts only: the pipeline fills its
intervals from its residuals like any expert without levels (``moe.intervals``).

Trees are fitted with scikit-learn and then kept as plain arrays (each node's feature,
threshold, side for missing values, children, leaf value), so a checkpoint is tensors only
and forecasting needs no scikit-learn object (a pickle would be unsafe to load). Reading the
fitted trees uses scikit-learn's internal ``_predictors``; ``tests/experts/test_global_trees``
checks that the arrays predict exactly what scikit-learn predicts, so a scikit-learn that
changes them fails there, not silently.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from moe.experts._loading import check_inputs, read_trained_checkpoint, write_checkpoint
from moe.experts.base import ExpertCapabilities, ExpertConfig, ExpertForecast, ExpertLoadError
from moe.experts.global_mlp import window_level

__all__ = [
    "NAME",
    "GlobalTreesConfig",
    "TreeArrays",
    "GlobalTreesForecaster",
    "train_global_trees",
    "save_global_trees",
    "build",
]

NAME = "global_trees"
#: Bumped when the inputs, the scaling or the tree layout change (cache key and checkpoint).
VERSION = 1


@dataclass(frozen=True)
class GlobalTreesConfig:
    """Training settings, as measured in docs/ACCURACY.md "accuracy16" (about 1-2 min for
    ~100k windows and 18 steps on one CPU core)."""

    input_points: int = 36
    level_points: int = 12
    max_iter: int = 200  # boosting rounds per step
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    #: Larger stores train on a seeded sample of this many windows (the cost is linear in it).
    max_windows: int = 300_000
    #: OpenMP threads of a fit (None: every core). One by default: with more threads than
    #: free cores (two retrains, or a retrain beside other work) scikit-learn's spinning
    #: threads made fits over 5x slower here (docs/RETRAIN.md).
    threads: int | None = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for field in ("input_points", "level_points", "max_iter", "max_windows"):
            if getattr(self, field) < 1:
                raise ValueError(
                    f"GlobalTreesConfig.{field} must be >= 1, got {getattr(self, field)}"
                )
        if self.max_leaf_nodes < 2:
            raise ValueError(
                f"GlobalTreesConfig.max_leaf_nodes must be >= 2, got {self.max_leaf_nodes}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"GlobalTreesConfig.threads must be >= 1 or None, got {self.threads}")
        if not 0 < self.learning_rate <= 1:
            raise ValueError(
                f"GlobalTreesConfig.learning_rate must be in (0, 1], got {self.learning_rate}"
            )


@dataclass(frozen=True)
class TreeArrays:
    """Every tree of every step as flat node arrays (``K`` nodes in all).

    ``feature`` ``(K,)`` int64, ``threshold`` ``(K,)`` float64 (go left when the value is
    ``<=`` it), ``missing_left`` ``(K,)`` bool (where NaN goes), ``left``/``right`` ``(K,)``
    int64 (absolute node indices), ``leaf`` ``(K,)`` bool, ``value`` ``(K,)`` float64 (a
    leaf's contribution, learning rate included); ``roots`` ``(H, T)`` int64, the root of
    tree ``t`` of step ``h``; ``baseline`` ``(H,)`` float64, each step's starting value.
    """

    feature: np.ndarray
    threshold: np.ndarray
    missing_left: np.ndarray
    left: np.ndarray
    right: np.ndarray
    leaf: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: np.ndarray

    FIELDS = (
        "feature",
        "threshold",
        "missing_left",
        "left",
        "right",
        "leaf",
        "value",
        "roots",
        "baseline",
    )

    def __post_init__(self) -> None:
        """A checkpoint is data from disk: refuse arrays that could index out of range or
        send a row round in circles, rather than fail (or hang) while forecasting."""
        size = self.leaf.shape
        if any(getattr(self, name).shape != size for name in self.FIELDS[:7]):
            raise ValueError(f"tree node arrays differ in length: expected {size}")
        if self.roots.ndim != 2 or self.baseline.shape != (self.roots.shape[0],):
            raise ValueError(
                f"roots (H, T) and baseline (H,) disagree: {self.roots.shape}, "
                f"{self.baseline.shape}"
            )
        count = size[0]
        for name in ("left", "right", "roots"):
            indices = getattr(self, name)
            if indices.size and (indices.min() < 0 or indices.max() >= count):
                raise ValueError(f"tree {name} point outside the {count} nodes")
        inner = ~self.leaf
        own = np.arange(count)
        if (self.feature[inner] < 0).any() or (
            (self.left[inner] <= own[inner]) | (self.right[inner] <= own[inner])
        ).any():
            raise ValueError("tree nodes must point to later nodes and name a feature >= 0")

    def predict(self, inputs: np.ndarray, chunk: int = 256) -> np.ndarray:
        """``inputs`` ``(B, F)`` float64 (NaN = missing) -> ``(B, H)``: per step, the
        baseline plus the leaf each tree sends the row to. ``chunk`` rows at a time (the
        walk holds ``chunk x H x T`` node indices)."""
        parts = [
            self._walk(inputs[begin : begin + chunk]) for begin in range(0, len(inputs), chunk)
        ]
        if not parts:
            return np.empty((0, self.roots.shape[0]))
        return np.concatenate(parts)

    def _walk(self, inputs: np.ndarray) -> np.ndarray:
        rows = np.arange(inputs.shape[0])[:, None, None]  # (B, 1, 1)
        node = np.broadcast_to(self.roots, (inputs.shape[0], *self.roots.shape)).copy()  # (B, H, T)
        while True:
            inner = ~self.leaf[node]
            if not inner.any():
                break
            values = inputs[np.broadcast_to(rows, node.shape), self.feature[node]]
            missing = np.isnan(values)
            go_left = np.where(missing, self.missing_left[node], values <= self.threshold[node])
            step = np.where(go_left, self.left[node], self.right[node])
            node = np.where(inner, step, node)
        return self.baseline[None, :] + self.value[node].sum(axis=2)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for field in self.FIELDS:
            digest.update(field.encode())
            digest.update(np.ascontiguousarray(getattr(self, field)).tobytes())
        return digest.hexdigest()[:16]


def arrays_from_sklearn(models: list[Any]) -> TreeArrays:
    """One fitted ``HistGradientBoostingRegressor`` per step -> ``TreeArrays``.

    Reads scikit-learn's fitted trees (``_predictors``, ``_baseline_prediction``); numerical
    features only, one tree per boosting round. Every step's model must have run the same
    number of rounds (no early stopping), so ``roots`` is rectangular.
    """
    columns: dict[str, list[np.ndarray]] = {
        key: []
        for key in ("feature", "threshold", "missing_left", "left", "right", "leaf", "value")
    }
    roots: list[list[int]] = []
    baseline: list[float] = []
    offset = 0
    for model in models:
        step_roots = []
        for (predictor,) in model._predictors:  # one tree per round for a regressor
            nodes = predictor.nodes
            if nodes["is_categorical"].any():
                raise ValueError("global_trees handles numerical features only")
            step_roots.append(offset)
            columns["feature"].append(nodes["feature_idx"].astype(np.int64))
            columns["threshold"].append(nodes["num_threshold"].astype(np.float64))
            columns["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
            columns["left"].append(nodes["left"].astype(np.int64) + offset)
            columns["right"].append(nodes["right"].astype(np.int64) + offset)
            columns["leaf"].append(nodes["is_leaf"].astype(bool))
            columns["value"].append(nodes["value"].astype(np.float64))
            offset += len(nodes)
        roots.append(step_roots)
        baseline.append(float(np.asarray(model._baseline_prediction).ravel()[0]))
    if len({len(step) for step in roots}) != 1:
        raise ValueError("every step's model must have the same number of trees")
    flat = {key: np.concatenate(parts) for key, parts in columns.items()}
    # A leaf's children point at itself, so a finished row stays on its leaf.
    own = np.arange(offset)
    flat["left"] = np.where(flat["leaf"], own, flat["left"])
    flat["right"] = np.where(flat["leaf"], own, flat["right"])
    return TreeArrays(
        **flat, roots=np.array(roots, np.int64), baseline=np.array(baseline, np.float64)
    )


def _inputs(
    context: np.ndarray, input_points: int, level_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(B, L)`` raw -> the trees' inputs ``(B, input_points)`` and each row's level ``(B,)``."""
    rows = np.asarray(context, np.float64)
    if rows.shape[1] >= input_points:
        rows = rows[:, rows.shape[1] - input_points :]
    else:
        pad = np.full((rows.shape[0], input_points - rows.shape[1]), np.nan)
        rows = np.concatenate([pad, rows], axis=1)
    level = window_level(rows, level_points)
    return rows / level[:, None], level


class GlobalTreesForecaster:
    """The trained trees behind the ``Expert`` protocol (point forecasts, on the CPU)."""

    name = NAME

    def __init__(self, trees: TreeArrays, input_points: int, level_points: int) -> None:
        used = trees.feature[~trees.leaf]
        if used.size and used.max() >= input_points:
            raise ValueError(f"trees read feature {used.max()} of {input_points} inputs")
        self.trees = trees
        self.horizon = int(trees.roots.shape[0])
        self.input_points = input_points
        self.level_points = level_points
        self.fingerprint = trees.fingerprint()
        self.checkpoint: str | None = None  # the file it was loaded from, when it was
        self.checkpoint_sha256: str | None = None  # ... and the SHA-256 of its bytes
        self.capabilities = ExpertCapabilities(
            max_context=input_points,
            min_context=1,
            native_horizon=self.horizon,
            quantile_levels=(),
            handles_missing=True,
        )

    @property
    def cache_key(self) -> str:
        """``global_trees|v=<n>|L=<input points>|H=<H>|level=<k>|trees=<sha256 prefix>``."""
        return (
            f"{NAME}|v={VERSION}|L={self.input_points}|H={self.horizon}"
            f"|level={self.level_points}|trees={self.fingerprint}"
        )

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        """``context`` ``(B, L)`` -> ``point`` ``(B, horizon)``; quantiles None.

        Horizons beyond the trained one feed the forecast back as context (autoregressive);
        rows without any observation get NaN.
        """
        check_inputs(context, horizon, self.name)
        rows = context.detach().cpu().double().numpy()  # a copy: the input is never written
        empty = np.isnan(rows).all(axis=1)
        produced: list[np.ndarray] = []
        history = rows
        remaining = horizon
        while remaining > 0:
            inputs, level = _inputs(history, self.input_points, self.level_points)
            step = self.trees.predict(inputs) * level[:, None]  # (B, H_trained)
            produced.append(step[:, :remaining])
            history = np.concatenate([history, step], axis=1)
            remaining -= step.shape[1]
        point = np.concatenate(produced, axis=1)
        point[empty] = np.nan
        return ExpertForecast(
            point=torch.from_numpy(point.astype(np.float32)).to(context.device), quantiles=None
        )


def train_global_trees(
    context: np.ndarray, target: np.ndarray, config: GlobalTreesConfig = GlobalTreesConfig()
) -> tuple[GlobalTreesForecaster, dict[str, Any]]:
    """Train on windows ``context`` ``(N, L)`` -> ``target`` ``(N, H)``; one model per step
    on the windows whose target at that step is observed. Returns the expert and a report.

    Deterministic for the same windows and config (seeded sample and trees, no early
    stopping), so a retrain on the same data gives the same ``cache_key``.
    """
    if context.ndim != 2 or target.ndim != 2 or context.shape[0] != target.shape[0]:
        raise ValueError(
            f"context (N, L) and target (N, H) must share N, got {context.shape}, {target.shape}"
        )
    if context.shape[0] == 0:
        raise ValueError(f"no training windows for the global expert {NAME!r}")
    started = time.perf_counter()
    rows = np.arange(context.shape[0])
    if rows.size > config.max_windows:
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, config.max_windows, False))
    inputs, level = _inputs(context[rows], config.input_points, config.level_points)
    goal = np.asarray(target[rows], np.float64) / level[:, None]
    with threadpool_limits(limits=config.threads, user_api="openmp"):
        models = _fit_steps(inputs, goal, config)
    expert = GlobalTreesForecaster(
        arrays_from_sklearn(models), config.input_points, config.level_points
    )
    report = {
        "windows": int(rows.size),
        "windows_available": int(context.shape[0]),
        "steps": len(models),
        "nodes": int(expert.trees.leaf.size),
        "seconds": time.perf_counter() - started,
        "fingerprint": expert.fingerprint,
    }
    return expert, report


def _fit_steps(inputs: np.ndarray, goal: np.ndarray, config: GlobalTreesConfig) -> list[Any]:
    """One fitted model per column of ``goal`` ``(N, H)`` on the rows where it is observed."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    models = []
    for step in range(goal.shape[1]):
        observed = np.isfinite(goal[:, step])
        if not observed.any():
            raise ValueError(f"{NAME}: no training window has a target at step {step + 1}")
        model = HistGradientBoostingRegressor(
            loss="absolute_error",
            max_iter=config.max_iter,
            learning_rate=config.learning_rate,
            max_leaf_nodes=config.max_leaf_nodes,
            early_stopping=False,
            random_state=config.seed,
        )
        models.append(model.fit(inputs[observed], goal[observed, step]))
    return models


def save_global_trees(expert: GlobalTreesForecaster, path: str | Path) -> Path:
    """Write the checkpoint (plain data and tensors) via a temporary file renamed into place."""
    payload = {
        "name": NAME,
        "version": VERSION,
        "input_points": expert.input_points,
        "level_points": expert.level_points,
        "trees": {
            field: torch.from_numpy(np.ascontiguousarray(getattr(expert.trees, field)))
            for field in TreeArrays.FIELDS
        },
        "fingerprint": expert.fingerprint,
    }
    return write_checkpoint(payload, path)


def build(config: ExpertConfig) -> GlobalTreesForecaster:
    """Load the trained expert from ``config.checkpoint`` (a ``.pt`` from ``save_global_trees``)."""
    checkpoint = read_trained_checkpoint(config, NAME, VERSION)
    raw, path = checkpoint.payload, checkpoint.path
    try:
        trees = TreeArrays(**{field: raw["trees"][field].numpy() for field in TreeArrays.FIELDS})
        expert = GlobalTreesForecaster(trees, int(raw["input_points"]), int(raw["level_points"]))
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ExpertLoadError(
            f"expert {NAME!r}: {str(path)!r} is not a complete {NAME} checkpoint: {error}"
        ) from error
    if expert.fingerprint != raw.get("fingerprint"):
        raise ExpertLoadError(f"expert {NAME!r}: {str(path)!r} trees do not match fingerprint")
    expert.checkpoint = str(path)
    expert.checkpoint_sha256 = checkpoint.sha256
    return expert
