"""Throughput of the Time-MoE expert vs the library's own rollout, full 50M size, random weights.

Random weights cost the same compute as trained ones; nothing here says anything about
accuracy. Run: ``python -m benchmarks._bench_timemoe --batch-sizes 1 32 256 --repeats 1``.

"Native" is what Time-MoE's reference usage does, on transformers 5: normalise each window
by its mean/std, then the rollout of ``TSGenerationMixin._greedy_search`` (each step calls
``forward(max_horizon_length=remaining)``, which picks the largest head that fits, and
appends the last position's prediction) with ``use_cache=False``. ``generate()`` itself
cannot run on transformers 5 (``DynamicCache.seen_tokens`` and
``_extract_past_from_model_output`` are gone), and the KV cache path fails the same way.
With ``pred_length`` <= 64 both paths are one forward pass over the window.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks._timing import time_pair

__all__ = ["TIMEMOE_50M", "bench_timemoe"]

#: TimeMoE-50M (Maple728/TimeMoE-50M config.json): 113M parameters, 50M active per token.
TIMEMOE_50M: dict[str, Any] = {
    "input_size": 1,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "horizon_lengths": [1, 8, 32, 64],
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "num_experts": 8,
    "num_experts_per_tok": 2,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000,
    "hidden_act": "silu",
    "use_dense": False,
    "apply_aux_loss": True,
}


def bench_timemoe(
    batch_sizes: Sequence[int],
    input_length: int = 512,
    pred_length: int = 64,
    repeats: int = 3,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    warmup: bool = True,
    seed: int = 0,
) -> list[dict[str, object]]:
    """Windows/second of ``TimeMoEForecaster.forecast`` and of the library's native rollout.

    Both get identical ``(B, input_length)`` random-walk windows and forecast
    ``pred_length`` steps with the same model object. One untimed warm-up call per path
    (unless ``warmup=False``); the best of ``repeats`` interleaved timed calls is reported. Returns
    one dict per batch size.
    """
    from sktime.libs.timemoe import TimeMoeConfig, TimeMoeForPrediction

    from moe.experts.base import ExpertConfig
    from moe.experts.timemoe import TimeMoEForecaster

    torch.manual_seed(seed)
    model = TimeMoeForPrediction(TimeMoeConfig(**TIMEMOE_50M))
    model = model.to(device=device, dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    parameters = sum(p.numel() for p in model.parameters())
    generator = torch.Generator().manual_seed(seed)
    results: list[dict[str, object]] = []
    for batch_size in batch_sizes:
        config = ExpertConfig(device=device, dtype=dtype, batch_size=batch_size)  # type: ignore[arg-type]
        expert = TimeMoEForecaster(model, "random-init", "none", config)
        windows = torch.randn(batch_size, input_length, generator=generator).cumsum(dim=1) + 100.0
        windows = windows.to(device)

        def ours(windows: torch.Tensor = windows, expert: Any = expert) -> torch.Tensor:
            return expert.forecast(windows, pred_length).point

        def native(windows: torch.Tensor = windows) -> torch.Tensor:
            return _native_rollout(model, windows, pred_length)

        (ours_s, ours_point), (native_s, native_point) = time_pair(
            ours, native, repeats, device, warmup
        )
        results.append(
            {
                "expert": "timemoe-50m",
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
                "max_abs_diff": float((ours_point.cpu() - native_point.cpu()).abs().max()),
            }
        )
    return results


@torch.inference_mode()
def _native_rollout(model: Any, windows: torch.Tensor, pred_length: int) -> torch.Tensor:
    """Time-MoE's reference recipe: mean/std normalise, greedy rollout, denormalise. ``(B, H)``."""
    mean, std = windows.mean(dim=-1, keepdim=True), windows.std(dim=-1, keepdim=True)
    sequence = ((windows - mean) / std).unsqueeze(-1).to(model.dtype)  # (B, L, 1)
    length = sequence.shape[1]
    while sequence.shape[1] < length + pred_length:
        output = model(
            input_ids=sequence,
            use_cache=False,
            return_dict=True,
            max_horizon_length=length + pred_length - sequence.shape[1],
        )
        sequence = torch.cat([sequence, output.logits[:, -1, :].unsqueeze(-1)], dim=1)
    return sequence[:, length:, 0].float() * std + mean


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    parser.add_argument("--input-length", type=int, default=512)
    parser.add_argument("--pred-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed first call")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = bench_timemoe(
        args.batch_sizes,
        args.input_length,
        args.pred_length,
        args.repeats,
        device=args.device,
        dtype=args.dtype,
        warmup=not args.no_warmup,
    )
    first = rows[0]
    print(
        f"Time-MoE 50M (random weights), {first['device']} {first['dtype']},"
        f" {first['threads']} threads, context {args.input_length}, horizon {args.pred_length}"
    )
    print(f"{'batch':>6} {'ours win/s':>11} {'native win/s':>13} {'ratio':>7} {'max |diff|':>11}")
    for row in rows:
        ours, native = row["ours_windows_per_s"], row["native_windows_per_s"]
        assert isinstance(ours, float) and isinstance(native, float)
        print(
            f"{row['batch_size']:>6} {ours:>11.2f} {native:>13.2f} {ours / native:>6.2f}x"
            f" {row['max_abs_diff']:>11.2e}"
        )


if __name__ == "__main__":
    _main()
