"""Throughput of the TimesFM 2.5 expert vs transformers' own batch API, full size, random weights.

Random weights cost the same compute as trained ones; nothing here says anything about
accuracy. Run: ``python -m benchmarks._bench_timesfm --batch-sizes 1 32 256 --repeats 2``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from benchmarks._timing import time_pair

__all__ = ["bench_timesfm"]


def bench_timesfm(
    batch_sizes: Sequence[int],
    input_length: int = 512,
    pred_length: int = 64,
    repeats: int = 3,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
) -> list[dict[str, object]]:
    """Windows/second of ``TimesFMForecaster.forecast`` and of ``model(past_values=[...])``.

    Both get identical ``(B, input_length)`` random-walk windows and forecast ``pred_length``
    steps; the model's ``context_length`` is set to ``input_length`` so the library does not
    pad every window to its 16384 default. One untimed warm-up call per path, then ``repeats``
    interleaved timed calls; the best is reported. Returns one dict per batch size.
    """
    from transformers import TimesFm2_5Config, TimesFm2_5ModelForPrediction

    from moe.experts.timesfm import TimesFMForecaster

    torch.manual_seed(seed)
    config = TimesFm2_5Config(context_length=input_length)  # full 200M architecture
    model = TimesFm2_5ModelForPrediction(config)
    model.to(device=device, dtype=getattr(torch, dtype))  # type: ignore[call-arg]  # bad stub
    model.eval().requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    results: list[dict[str, object]] = []
    for batch_size in batch_sizes:
        expert = TimesFMForecaster(
            model, identity="random-init", dtype=dtype, batch_size=batch_size
        )
        windows = torch.randn(batch_size, input_length, generator=generator).cumsum(dim=1) + 100.0
        windows = windows.to(device)

        def ours(
            windows: torch.Tensor = windows, expert: TimesFMForecaster = expert
        ) -> torch.Tensor:
            return expert.forecast(windows, pred_length).point

        def native(windows: torch.Tensor = windows) -> torch.Tensor:
            with torch.no_grad():
                output = model(past_values=list(windows), forecast_context_len=input_length)
            return output.mean_predictions[:, :pred_length].float()

        (ours_s, ours_point), (native_s, native_point) = time_pair(ours, native, repeats, device)
        results.append(
            {
                "expert": "timesfm-2.5-200m",
                "parameters": parameters,
                "device": device,
                "dtype": dtype,
                "threads": torch.get_num_threads(),
                "batch_size": batch_size,
                "input_length": input_length,
                "pred_length": pred_length,
                "repeats": repeats,
                "ours_s": ours_s,
                "native_s": native_s,
                "ours_windows_per_s": batch_size / ours_s,
                "native_windows_per_s": batch_size / native_s,
                "max_abs_diff": float((ours_point - native_point).abs().max()),
            }
        )
    return results


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--pred-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_timesfm(
        args.batch_sizes,
        args.input_length,
        args.pred_length,
        args.repeats,
        device=args.device,
        dtype=args.dtype,
    )
    print(
        f"TimesFM 2.5 200M (random weights), {rows[0]['device']} {rows[0]['dtype']},"
        f" {rows[0]['threads']} threads, context {args.input_length}, horizon {args.pred_length}"
    )
    print(
        f"{'batch':>6} {'ours win/s':>11} {'native win/s':>13} {'speed-up':>9} {'max |diff|':>11}"
    )
    for row in rows:
        ours, native = row["ours_windows_per_s"], row["native_windows_per_s"]
        assert isinstance(ours, float) and isinstance(native, float)
        print(
            f"{row['batch_size']:>6} {ours:>11.2f} {native:>13.2f} {ours / native:>8.2f}x"
            f" {row['max_abs_diff']:>11.2e}"
        )


if __name__ == "__main__":
    _main()
