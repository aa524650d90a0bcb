"""Gate benchmarks: (a) a training epoch on the cache vs the seed's live design, (b) sparse
top-2 inference vs running every expert, (c) training 100,000 cached windows with the seed's
defaults. Prints tables; not run by pytest.

(a) The seed ran the experts inside every training step (``out = router(x)``, Huber loss,
backward, Adam on the gate). We time a few such live steps with ``batch_size=8`` and scale
to one epoch of ``--windows`` windows; the cached epoch is ``train_gate`` for one epoch on a
``(N, E, H)`` tensor. The cached tensor holds random numbers of the right shape: the cost
of a cached epoch does not depend on the values, and filling it with real forecasts is the
(one-off) precompute, which is not what (a) compares. Target: cached >= 1000x faster.

(b) One batch of ``--batch`` windows: ``MoERouter.route`` with the linear gate (each expert
runs once, on the rows that chose it: 2 x B rows in all) against every expert on every row
followed by the same mix (3 x B rows). Target: sparse/dense <= 0.70 with experts of
similar cost (the per-expert time on the batch is printed to check that).

Expert specs for ``--experts`` (comma-separated; the factory is pluggable):

* ``fake:NAME``: ``moe.experts.fake.FakeForecaster`` (almost free; shows overheads only);
* ``mlp:NAME[:WIDTH]``: a random-weight MLP forecaster (synthetic, similar-cost experts);
* ``random:moirai|timemoe|timesfm``: the full-size architectures with random weights, built
  from the other benchmark helpers (compute of the real checkpoints; forecasts meaningless);
* ``py:package.module:function``: any ``function(input_length=, pred_length=, device=)``
  returning an ``Expert``;
* ``NAME``: a registry expert (``moe.experts.registry.build_expert``), e.g. ``autoets``.

Examples::

    python -m benchmarks.bench_gate --experts mlp:a,mlp:b,mlp:c
    python -m benchmarks.bench_gate --experts random:moirai,random:timemoe,random:timesfm \\
        --input-length 512 --pred-length 64 --batch 32 --live-steps 2

Threads: ``torch.set_num_threads(--threads)`` (default 2) for everything.
"""

from __future__ import annotations

import argparse
import importlib
import math
import time
import zlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from moe.experts.base import Expert, ExpertCapabilities, ExpertConfig, ExpertForecast
from moe.router import MoERouter, replay_top2, run_experts, select_top2
from moe.scaling import scale_context, window_scale
from moe.training import TrainConfig, train_gate

__all__ = [
    "MLPExpert",
    "make_expert",
    "bench_training_epoch",
    "bench_inference",
    "bench_train_100k",
]

ExpertFactory = Callable[[int, int, str], Expert]


class MLPExpert:
    """Random-weight MLP forecaster ``(B, L) -> (B, H)``: a synthetic expert of known cost."""

    def __init__(
        self, name: str, input_length: int, pred_length: int, width: int = 1024, seed: int = 0
    ) -> None:
        self.name = name
        self.pred_length = pred_length
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.net = (
            nn.Sequential(
                nn.Linear(input_length, width),
                nn.GELU(),
                nn.Linear(width, width),
                nn.GELU(),
                nn.Linear(width, width),
                nn.GELU(),
                nn.Linear(width, pred_length),
            )
            .eval()
            .requires_grad_(False)
        )
        torch.random.set_rng_state(generator_state)
        self.width = width
        self.capabilities = ExpertCapabilities(None, 1, pred_length, (), False)

    @property
    def cache_key(self) -> str:
        return f"mlp:{self.name}:width={self.width}"

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        if horizon != self.pred_length:
            raise ValueError(f"{self.name}: built for horizon {self.pred_length}, got {horizon}")
        scale = context.abs().nanmean(dim=1, keepdim=True).clamp_min(1e-6)
        with torch.no_grad():
            point = self.net((context / scale).nan_to_num(0.0)) * scale
        return ExpertForecast(point=point, quantiles=None)


def _random_foundation(name: str, input_length: int, pred_length: int, device: str) -> Expert:
    """Full-size random-weight architectures, via the other benchmark helpers' building blocks."""
    if name == "moirai":
        from benchmarks._bench_moirai import small_architecture
        from moe.experts.moirai import MoiraiForecaster

        module = small_architecture().to(device).eval()
        return MoiraiForecaster(module, identity="random-init")
    if name == "timemoe":
        from sktime.libs.timemoe import TimeMoeConfig, TimeMoeForPrediction

        from benchmarks._bench_timemoe import TIMEMOE_50M
        from moe.experts.timemoe import TimeMoEForecaster

        model = (
            TimeMoeForPrediction(TimeMoeConfig(**TIMEMOE_50M))
            .to(device)
            .eval()
            .requires_grad_(False)
        )
        return TimeMoEForecaster(model, "random-init", "none", ExpertConfig(device=device))
    if name == "timesfm":
        from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

        from moe.experts.timesfm import TimesFMForecaster

        model = TimesFm2_5ModelForPrediction(TimesFm2_5Config(context_length=input_length))
        model = model.to(device).eval().requires_grad_(False)  # type: ignore[arg-type]
        return TimesFMForecaster(model, identity="random-init", dtype="float32", batch_size=256)
    raise ValueError(f"random:{name}: expected moirai, timemoe or timesfm")


def make_expert(spec: str, input_length: int, pred_length: int, device: str) -> Expert:
    """Build one expert from a spec (see the module docstring)."""
    kind, _, rest = spec.partition(":")
    if not rest:
        from moe.experts.registry import build_expert

        return build_expert(spec, ExpertConfig(device=device))
    if kind == "fake":
        from moe.experts.fake import FakeForecaster

        return FakeForecaster(rest, factor=1.0 + 0.1 * (zlib.crc32(rest.encode()) % 7))
    if kind == "mlp":
        name, _, width = rest.partition(":")
        return MLPExpert(
            name, input_length, pred_length, int(width or 1024), seed=zlib.crc32(name.encode())
        )
    if kind == "random":
        return _random_foundation(rest, input_length, pred_length, device)
    if kind == "py":
        module_name, _, function_name = rest.rpartition(":")
        factory: Callable[..., Expert] = getattr(
            importlib.import_module(module_name), function_name
        )
        return factory(input_length=input_length, pred_length=pred_length, device=device)
    raise ValueError(f"unknown expert spec {spec!r}")


def _windows(
    n: int, input_length: int, pred_length: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    walk = torch.randn(n, input_length + pred_length, generator=generator).cumsum(dim=1) + 100.0
    return walk[:, :input_length].contiguous(), walk[:, input_length:].contiguous()


def _best(function: Callable[[], Any], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench_training_epoch(
    experts: Sequence[Expert],
    input_length: int,
    pred_length: int,
    windows: int,
    live_steps: int,
    device: str = "cpu",
    repeats: int = 2,
) -> dict[str, float]:
    """(a): seconds per epoch of ``windows`` windows, cached vs live (from ``live_steps``)."""
    config = TrainConfig(epochs=1, val_fraction=0.0)
    context, target = _windows(windows, input_length, pred_length)
    points = target[:, None, :] + torch.randn(windows, len(experts), pred_length)  # (N, E, H)
    cached_s = _best(lambda: train_gate(context, target, points, config), repeats)

    torch.manual_seed(0)
    router = MoERouter(input_length, pred_length, device, experts=list(experts))
    optimizer = torch.optim.Adam(router.gating.parameters(), lr=config.lr)
    criterion = nn.HuberLoss(delta=config.huber_delta)
    batches = list(
        zip(context.split(config.batch_size), target.split(config.batch_size), strict=True)
    )

    def seed_step(x: torch.Tensor, y: torch.Tensor) -> None:  # the seed's training step
        loss = criterion(router(x.to(device)), y.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seed_step(*batches[0])  # warm-up
    step_times = []
    for x, y in batches[1 : 1 + live_steps]:
        start = time.perf_counter()
        seed_step(x, y)
        step_times.append(time.perf_counter() - start)
    step_s = sorted(step_times)[len(step_times) // 2]
    steps_per_epoch = math.ceil(windows / config.batch_size)
    live_s = step_s * steps_per_epoch
    return {
        "windows": windows,
        "steps_per_epoch": steps_per_epoch,
        "live_step_s": step_s,
        "live_epoch_s": live_s,
        "cached_epoch_s": cached_s,
        "speedup": live_s / cached_s,
    }


def bench_inference(
    experts: Sequence[Expert],
    input_length: int,
    pred_length: int,
    batch: int,
    device: str = "cpu",
    repeats: int = 3,
) -> dict[str, Any]:
    """(b): seconds for one batch, sparse top-2 dispatch vs every expert on every row."""
    torch.manual_seed(0)
    router = MoERouter(input_length, pred_length, device, experts=list(experts)).eval()
    context, _ = _windows(batch, input_length, pred_length, seed=1)
    context = context.to(device)

    def sparse() -> torch.Tensor:
        with torch.no_grad():
            return router.route(context).point

    def dense() -> torch.Tensor:
        with torch.no_grad():
            points, quantiles = run_experts(router.experts, context, pred_length)
            logits = router.gating(scale_context(context, window_scale(context)), None)
            return replay_top2(logits, points, quantiles).point

    sparse(), dense()  # warm-up
    sparse_s, dense_s = _best(sparse, repeats), _best(dense, repeats)
    torch.testing.assert_close(sparse(), dense())  # same forecast, less work
    with torch.no_grad():
        selection = select_top2(router.gating(scale_context(context, window_scale(context)), None))
    rows = [int((selection.indices == e).any(dim=1).sum()) for e in range(len(experts))]
    per_expert = {}
    for expert in experts:
        per_expert[expert.name] = _best(partial(expert.forecast, context, pred_length), 1)
    return {
        "batch": batch,
        "sparse_s": sparse_s,
        "dense_s": dense_s,
        "ratio": sparse_s / dense_s,
        "rows_per_expert": rows,
        "expert_full_batch_s": per_expert,
    }


def bench_train_100k(
    windows: int = 100_000, input_length: int = 32, pred_length: int = 8
) -> dict[str, float]:
    """(c): ``train_gate``, seed defaults (batch 8, 5 epochs), on ``windows`` cached windows."""
    context, target = _windows(windows, input_length, pred_length, seed=2)
    points = target[:, None, :] + torch.randn(windows, 3, pred_length)
    start = time.perf_counter()
    result = train_gate(context, target, points, TrainConfig())
    return {
        "windows": windows,
        "steps": 5 * math.ceil(result.n_train / 8),
        "seconds": time.perf_counter() - start,
    }


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experts", default="mlp:a,mlp:b,mlp:c")
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--pred-length", type=int, default=64)
    parser.add_argument("--windows", type=int, default=10_000, help="(a) windows per epoch")
    parser.add_argument("--live-steps", type=int, default=5, help="(a) live steps timed")
    parser.add_argument("--batch", type=int, default=64, help="(b) windows per inference batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-100k", action="store_true", help="skip (c)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    specs = [spec.strip() for spec in args.experts.split(",") if spec.strip()]
    experts = [
        make_expert(spec, args.input_length, args.pred_length, args.device) for spec in specs
    ]
    print(
        f"experts: {', '.join(specs)} | L={args.input_length} H={args.pred_length} "
        f"device={args.device} threads={torch.get_num_threads()}"
    )

    a = bench_training_epoch(
        experts, args.input_length, args.pred_length, args.windows, args.live_steps, args.device
    )
    print("\n(a) one training epoch, batch_size=8 (live = seed's design, scaled from timed steps)")
    print(
        "| windows | steps | live step s | live epoch s | cached epoch s "
        "| speed-up (target >= 1000x) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {a['windows']} | {a['steps_per_epoch']} | {a['live_step_s']:.4f} "
        f"| {a['live_epoch_s']:.1f} "
        f"| {a['cached_epoch_s']:.3f} | {a['speedup']:.0f}x |"
    )

    b = bench_inference(
        experts, args.input_length, args.pred_length, args.batch, args.device, args.repeats
    )
    print(f"\n(b) inference on one batch of {b['batch']} windows")
    print(
        "| sparse top-2 s | all experts s | ratio (target <= 0.70) | rows per expert (sparse) "
        "| each expert on full batch s |"
    )
    print("|---|---|---|---|---|")
    costs = ", ".join(f"{name} {seconds:.3f}" for name, seconds in b["expert_full_batch_s"].items())
    print(
        f"| {b['sparse_s']:.3f} | {b['dense_s']:.3f} | {b['ratio']:.2f} "
        f"| {b['rows_per_expert']} | {costs} |"
    )

    if not args.skip_100k:
        c = bench_train_100k()
        print("\n(c) train_gate, seed defaults (batch 8, 5 epochs, linear gate), L=32 H=8 E=3")
        print("| windows | optimiser steps | seconds |")
        print("|---|---|---|")
        print(f"| {c['windows']} | {c['steps']} | {c['seconds']:.1f} |")


if __name__ == "__main__":
    _main()
