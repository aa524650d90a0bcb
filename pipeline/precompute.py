"""Fill the expert-forecast cache: each expert runs once per distinct window, in batches.

Every ``rows_per_part`` computed windows are written as one Parquet part, so a precompute
killed midway resumes from the last part that landed; a rerun on the same data does no
expert work at all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from moe.experts.base import QUANTILE_LEVELS, Expert, legacy_cache_keys
from moe.precompute import experts_for_season, forecast_in_batches, season_groups
from storage.cache import (
    CachedModel,
    cached_window_hashes,
    read_forecasts,
    window_hashes,
    write_forecasts,
)
from storage.store import Store

__all__ = ["PrecomputeStats", "precompute_cache", "load_cached", "cached_model", "shard_contexts"]


@dataclass(frozen=True)
class PrecomputeStats:
    """What one expert's precompute did."""

    expert: str
    windows: int  # windows asked for
    distinct: int  # distinct window contents among them
    already_cached: int
    computed: int
    seconds: float

    @property
    def windows_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


def cached_model(expert: Expert, input_length: int, pred_length: int) -> CachedModel:
    """The cache partition of ``expert``, reading too what older spellings of its key stored."""
    aliases = legacy_cache_keys(expert)
    return CachedModel(expert.name, expert.cache_key, input_length, pred_length, aliases)


def precompute_cache(
    store: Store,
    experts: Sequence[Expert],
    context: np.ndarray,
    pred_length: int,
    *,
    batch_size: int = 256,
    rows_per_part: int = 8192,
    device: str | torch.device = "cpu",
    progress: bool = True,
    season_lengths: np.ndarray | None = None,
) -> list[PrecomputeStats]:
    """Forecast every window of ``context`` ``(N, L)`` not yet cached, for each expert.

    ``season_lengths`` ``(N,)``: each window's seasonal period; season-aware experts then
    run once per distinct period, as that period's variant (its own cache key). None runs
    the experts as given. One ``PrecomputeStats`` per expert, summed over the periods.
    """
    if season_lengths is None:
        return _precompute(
            store, experts, context, pred_length, batch_size, rows_per_part, device, progress
        )
    totals: dict[str, PrecomputeStats] = {}
    for season, rows in season_groups(season_lengths):
        variants = experts_for_season(experts, season)
        for stats in _precompute(
            store, variants, context[rows], pred_length, batch_size, rows_per_part, device, progress
        ):
            before = totals.get(stats.expert)
            totals[stats.expert] = stats if before is None else _add(before, stats)
    return [totals[expert.name] for expert in experts if expert.name in totals]


def _add(first: PrecomputeStats, second: PrecomputeStats) -> PrecomputeStats:
    return PrecomputeStats(
        expert=first.expert,
        windows=first.windows + second.windows,
        distinct=first.distinct + second.distinct,
        already_cached=first.already_cached + second.already_cached,
        computed=first.computed + second.computed,
        seconds=first.seconds + second.seconds,
    )


def _precompute(
    store: Store,
    experts: Sequence[Expert],
    context: np.ndarray,
    pred_length: int,
    batch_size: int,
    rows_per_part: int,
    device: str | torch.device,
    progress: bool,
) -> list[PrecomputeStats]:
    """``precompute_cache`` for experts already configured for every row of ``context``."""
    input_length = context.shape[1]
    hashes = window_hashes(context)
    first_row: dict[str, int] = {}
    for row, digest in enumerate(hashes):
        first_row.setdefault(digest, row)
    stats: list[PrecomputeStats] = []
    for expert in experts:
        model = cached_model(expert, input_length, pred_length)
        done = cached_window_hashes(store, model)
        todo = [(digest, row) for digest, row in first_row.items() if digest not in done]
        started = time.perf_counter()
        run = uuid.uuid4().hex[:12]
        bar = tqdm(
            total=len(todo), unit="win", desc=f"{expert.name}", disable=not progress or not todo
        )
        for part, begin in enumerate(range(0, len(todo), rows_per_part)):
            block = todo[begin : begin + rows_per_part]
            rows = np.fromiter((row for _, row in block), np.int64, count=len(block))
            point = np.empty((len(block), pred_length), np.float32)
            quantiles: np.ndarray | None = None
            for sl, result in forecast_in_batches(
                expert, context[rows], pred_length, batch_size, device
            ):
                point[sl] = result.point.numpy()
                if result.quantiles is not None:
                    if quantiles is None:
                        shape = (len(block), pred_length, len(QUANTILE_LEVELS))
                        quantiles = np.full(shape, np.nan, np.float32)
                    quantiles[sl] = result.quantiles.numpy()
                bar.update(sl.stop - sl.start)
            write_forecasts(
                store, model, [digest for digest, _ in block], point, quantiles, f"{run}-{part:05d}"
            )
        bar.close()
        stats.append(
            PrecomputeStats(
                expert=expert.name,
                windows=len(hashes),
                distinct=len(first_row),
                already_cached=len(first_row) - len(todo),
                computed=len(todo),
                seconds=time.perf_counter() - started,
            )
        )
    return stats


def load_cached(
    store: Store,
    experts: Sequence[Expert],
    context: np.ndarray,
    pred_length: int,
    *,
    with_quantiles: bool = True,
    season_lengths: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cached forecasts aligned with ``context`` ``(N, L)``.

    Returns ``points`` ``(N, E, H)`` and ``quantiles`` ``(N, E, H, Q)`` (None unless
    ``with_quantiles``); raises if any window is missing (run ``precompute_cache`` first).
    ``season_lengths`` ``(N,)``: read each window from its period's expert variants (as
    ``precompute_cache`` wrote them).
    """
    if season_lengths is not None:
        groups = season_groups(season_lengths)
        if len(groups) > 1:
            return _load_by_season(store, experts, context, pred_length, with_quantiles, groups)
        if groups:
            experts = experts_for_season(experts, groups[0][0])
    models = [cached_model(e, context.shape[1], pred_length) for e in experts]
    n_quantiles = len(QUANTILE_LEVELS) if with_quantiles else None
    points, quantiles, found = read_forecasts(store, models, window_hashes(context), n_quantiles)
    if not found.all():
        missing = {experts[e].name: int((~found[:, e]).sum()) for e in range(len(experts))}
        raise LookupError(f"windows missing from the expert cache: {missing}")
    return torch.from_numpy(points), None if quantiles is None else torch.from_numpy(quantiles)


def _load_by_season(
    store: Store,
    experts: Sequence[Expert],
    context: np.ndarray,
    pred_length: int,
    with_quantiles: bool,
    groups: list[tuple[int, np.ndarray]],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``load_cached`` one period at a time, scattered back into window order."""
    n = context.shape[0]
    points = torch.full((n, len(experts), pred_length), float("nan"))
    quantiles = (
        torch.full((n, len(experts), pred_length, len(QUANTILE_LEVELS)), float("nan"))
        if with_quantiles
        else None
    )
    for season, rows in groups:
        variants = experts_for_season(experts, season)
        group_points, group_quantiles = load_cached(
            store, variants, context[rows], pred_length, with_quantiles=with_quantiles
        )
        index = torch.from_numpy(rows)
        points[index] = group_points
        if quantiles is not None and group_quantiles is not None:
            quantiles[index] = group_quantiles
    return points, quantiles


def shard_contexts(context: np.ndarray, shards: int) -> list[np.ndarray]:
    """Distinct rows of ``context`` ``(N, L)`` cut into at most ``shards`` non-empty
    blocks ``(n_i, L)``; each distinct window lands in exactly one block."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    first: dict[str, int] = {}
    for row, digest in enumerate(window_hashes(context)):
        first.setdefault(digest, row)
    distinct = context[np.fromiter(first.values(), np.int64, count=len(first))]
    return [block for block in np.array_split(distinct, shards) if len(block)]
