"""Throughput of the Moirai-MoE expert vs uni2ts' own batch API, full-size random weights.

Builds the ``Salesforce/moirai-moe-1.0-R-small`` architecture (d_model 384, d_ff 512, 6 layers,
32 experts top-2, patch 16, 117 M parameters of which ~11 M active per token) with random
weights: the compute is that of the real checkpoint, the forecasts mean nothing. Every method
forecasts the same random-walk windows with 100 sample paths and returns median and
quantiles:

* ``adapter``: ``MoiraiForecaster.forecast`` (this repository);
* ``native_predictor``: ``MoiraiMoEForecast.create_predictor(...).predict`` on a GluonTS
  dataset, then ``np.quantile`` over each item's samples (what a uni2ts user writes);
* ``native_forward``: ``MoiraiMoEForecast.forward`` on ready-made tensors (no GluonTS
  transforms; the floor of the native path), then ``torch.quantile``.

Run: ``python -m benchmarks._bench_moirai`` (prints a table; one torch thread). Not run by
pytest. On CPU the work per window is flat in the batch size (compute-bound: 100 paths x 3
autoregressive passes over ~34 patches), so batch 256 costs ~8x batch 32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from moe.experts.base import QUANTILE_LEVELS
from moe.experts.moirai import NUM_SAMPLES, MoiraiForecaster

if TYPE_CHECKING:
    from uni2ts.model.moirai_moe import MoiraiMoEModule

__all__ = ["bench_moirai", "small_architecture"]


def small_architecture(seed: int = 0) -> MoiraiMoEModule:
    """Full-size moirai-moe-1.0-R-small with random weights (centroids initialised)."""
    from uni2ts.distribution import (
        LogNormalOutput,
        MixtureOutput,
        NegativeBinomialOutput,
        NormalFixedScaleOutput,
        StudentTOutput,
    )
    from uni2ts.model.moirai_moe import MoiraiMoEModule

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        module = MoiraiMoEModule(
            distr_output=MixtureOutput(
                [
                    StudentTOutput(),
                    NormalFixedScaleOutput(),
                    NegativeBinomialOutput(),
                    LogNormalOutput(),
                ]
            ),
            d_model=384,
            d_ff=512,
            num_layers=6,
            patch_sizes=(16,),
            max_seq_len=512,
            attn_dropout_p=0.0,
            dropout_p=0.0,
        )
        with torch.no_grad():
            module.encoder.centroid.normal_()  # torch.empty in uni2ts
    finally:
        torch.random.set_rng_state(state)
    return module.eval().requires_grad_(False)


def bench_moirai(
    batch_sizes: Sequence[int] = (1, 32, 256),
    input_length: int = 512,
    pred_length: int = 64,
    repeats: int = 1,
    methods: Sequence[str] = ("adapter", "native_predictor", "native_forward"),
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Windows per second of each method at each batch size (best of ``repeats`` runs).

    Methods run interleaved inside each repeat, so load from other processes hits them
    alike; ``cpu_seconds`` (this process's CPU time) is less sensitive to such load than
    wall time. Each method is warmed up once on one window with a one-patch horizon.
    Returns one dict per (batch size, method).
    """
    module = small_architecture().to(device)
    runners: dict[str, Callable[[torch.Tensor, int], None]] = {
        "adapter": _adapter_runner(module),
        "native_predictor": _predictor_runner(module, input_length, device),
        "native_forward": _forward_runner(module, input_length),
    }
    generator = torch.Generator().manual_seed(1)
    windows = 100 + torch.randn(max(batch_sizes), input_length, generator=generator).cumsum(1)
    windows = windows.to(device)
    for method in methods:
        runners[method](windows[:1], 16)  # warm-up
    rows = []
    for batch in batch_sizes:
        wall: dict[str, list[float]] = {method: [] for method in methods}
        cpu: dict[str, list[float]] = {method: [] for method in methods}
        for _ in range(repeats):
            for method in methods:
                start, start_cpu = time.perf_counter(), time.process_time()
                runners[method](windows[:batch], pred_length)
                wall[method].append(time.perf_counter() - start)
                cpu[method].append(time.process_time() - start_cpu)
        for method in methods:
            best = min(wall[method])
            rows.append(
                {
                    "method": method,
                    "batch_size": batch,
                    "input_length": input_length,
                    "pred_length": pred_length,
                    "num_samples": NUM_SAMPLES,
                    "repeats": repeats,
                    "seconds": best,
                    "cpu_seconds": min(cpu[method]),
                    "windows_per_s": batch / best,
                    "device": device,
                    "threads": torch.get_num_threads(),
                }
            )
    return rows


def _adapter_runner(module: MoiraiMoEModule) -> Callable[[torch.Tensor, int], None]:
    def run(windows: torch.Tensor, horizon: int) -> None:
        expert = MoiraiForecaster(module, identity="random", batch_size=windows.shape[0])
        expert.forecast(windows, horizon)

    return run


def _native(module: MoiraiMoEModule, input_length: int, pred_length: int) -> Any:
    from uni2ts.model.moirai_moe import MoiraiMoEForecast

    return MoiraiMoEForecast(
        prediction_length=pred_length,
        target_dim=1,
        feat_dynamic_real_dim=0,
        past_feat_dynamic_real_dim=0,
        context_length=input_length,
        module=module,
        patch_size=16,
        num_samples=NUM_SAMPLES,
    ).eval()


def _predictor_runner(
    module: MoiraiMoEModule, input_length: int, device: str
) -> Callable[[torch.Tensor, int], None]:
    import pandas as pd

    def run(windows: torch.Tensor, horizon: int) -> None:
        forecaster = _native(module, input_length, horizon)
        predictor = forecaster.create_predictor(batch_size=windows.shape[0], device=device)
        start = pd.Period("2020-01-01", freq="D")
        dataset = [{"start": start, "target": row} for row in windows.cpu().numpy()]
        for forecast in predictor.predict(dataset):
            np.quantile(forecast.samples, QUANTILE_LEVELS, axis=0)  # (Q, H)

    return run


def _forward_runner(
    module: MoiraiMoEModule, input_length: int
) -> Callable[[torch.Tensor, int], None]:
    def run(windows: torch.Tensor, horizon: int) -> None:
        forecaster = _native(module, input_length, horizon)
        past_target = windows[:, :, None]  # (B, L, 1)
        observed = torch.ones_like(past_target, dtype=torch.bool)
        is_pad = torch.zeros(windows.shape, dtype=torch.bool, device=windows.device)
        with torch.no_grad():
            samples = forecaster(past_target, observed, is_pad)  # (B, S, H)
        levels = torch.tensor(QUANTILE_LEVELS, device=samples.device)
        torch.quantile(samples, levels, dim=1)

    return run


def _print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'method':<18}{'batch':>7}{'seconds':>10}{'cpu s':>10}{'windows/s':>12}")
    for row in rows:
        print(
            f"{row['method']:<18}{row['batch_size']:>7}{row['seconds']:>10.2f}"
            f"{row['cpu_seconds']:>10.2f}{row['windows_per_s']:>12.3f}"
        )


if __name__ == "__main__":
    # one intra-op thread: on a shared 2-core box a second one mostly spin-waits
    torch.set_num_threads(1)
    _print_table(bench_moirai())
