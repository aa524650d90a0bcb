"""Experiment (issue 13 item 8, MoC-style fusion): refine the two chosen forecasts jointly.

Not part of the product: a measurement reported in docs/ACCURACY.md. For each data set
the pair is the constant pair best on the (older) training windows. A 32-unit MLP on the
series features (``moe.features``) and the two forecasts (centred on the window's last
value, in MASE units) outputs per-step weights ``a_h`` and a bounded correction ``b_h``:
``a_h f_i + (1 - a_h) f_j + 0.5 tanh(b_h) |f_i - f_j|``. It trains on the training windows
with an L1 loss, keeps the best epoch on validation (each series' newest training window)
and prints the paired difference to the plain equal-weight pair on validation and test.
Reads the expert cache that ``bench_accuracy.py --precompute-only`` fills::

    python benchmarks/exp_fusion_head.py --store /work/bench_store --datasets m3,tourism,m1 \\
        --max-series m3=400
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from benchmarks._accuracy_data import DATASETS, load_series, make_windows  # noqa: E402
from benchmarks.bench_accuracy import build_available_experts  # noqa: E402
from moe.feature_gate import FeaturePairGate  # noqa: E402
from moe.scaling import mase_scales  # noqa: E402
from moe.training.pair import pair_errors  # noqa: E402
from pipeline.precompute import load_cached  # noqa: E402
from storage.store import Store  # noqa: E402

EXPERTS = ["seasonal_naive", "autoets", "autotheta", "fracast"]


def _last_observed(context: torch.Tensor) -> torch.Tensor:
    """``(N,)`` the last observed value of each window (0 when none)."""
    observed = ~torch.isnan(context)
    index = torch.where(observed, torch.arange(context.shape[1]), -1).max(dim=1).values
    values = context.gather(1, index.clamp_min(0)[:, None]).squeeze(1)
    return torch.where(index >= 0, values, torch.zeros_like(values))


def run(name: str, store: Store, max_series: int | None, seed: int) -> None:
    """Train the fusion head on one data set and print its validation and test differences."""
    data = load_series(name, max_series)
    windows = make_windows(data, DATASETS[name].input_length, 3)
    experts = build_available_experts(EXPERTS, data.period, "cpu")
    points, _ = load_cached(store, experts, windows.context, data.horizon)
    context = torch.from_numpy(windows.context)
    target = torch.from_numpy(windows.target)
    scale = mase_scales(context, data.period)
    gate = FeaturePairGate(context.shape[1], data.horizon, len(experts), season_length=data.period)
    features = gate.raw_inputs(context, None, data.period)
    test = torch.from_numpy(windows.is_test)
    val = torch.from_numpy(windows.is_validation)
    train = ~test & ~val
    errors = pair_errors(points.float(), target, scale, gate.pair_index)
    first, second = gate.pair_index[int(errors[train].mean(0).argmin())].tolist()
    last = _last_observed(context)
    f_i = (points[:, first] - last[:, None]) / scale[:, None]
    f_j = (points[:, second] - last[:, None]) / scale[:, None]
    y = (target - last[:, None]) / scale[:, None]
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-3)
    inputs = torch.cat([(features - mean) / std, f_i.clamp(-20, 20) / 5, f_j.clamp(-20, 20) / 5], 1)
    horizon = data.horizon
    torch.manual_seed(seed)
    head = nn.Linear(32, 2 * horizon)
    net = nn.Sequential(nn.Linear(inputs.shape[1], 32), nn.GELU(), head)
    nn.init.zeros_(head.weight)  # starts as the plain equal-weight pair
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)

    def fused(rows: torch.Tensor) -> torch.Tensor:
        out = net(inputs[rows])
        weight = torch.sigmoid(out[:, :horizon])
        correction = 0.5 * torch.tanh(out[:, horizon:]) * (f_i[rows] - f_j[rows]).abs()
        return weight * f_i[rows] + (1 - weight) * f_j[rows] + correction

    def window_error(forecast: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (forecast - y[rows]).abs().nanmean(1)

    train_rows, val_rows, test_rows = (m.nonzero().squeeze(1) for m in (train, val, test))
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, dict[str, torch.Tensor], int] | None = None
    for epoch in range(80):
        order = train_rows[torch.randperm(train_rows.numel(), generator=generator)]
        for rows in order.split(128):
            loss = (fused(rows) - y[rows]).abs().nan_to_num(0.0).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            score = float(window_error(fused(val_rows), val_rows).mean())
        if best is None or score < best[0]:
            best = (score, copy.deepcopy(net.state_dict()), epoch)
    assert best is not None
    net.load_state_dict(best[1])
    names = [e.name for e in experts]
    print(f"{name}: pair {names[first]}+{names[second]}, best epoch {best[2]}")
    with torch.no_grad():
        for label, rows in (("validation", val_rows), ("test", test_rows)):
            plain = window_error(0.5 * (f_i[rows] + f_j[rows]), rows)
            difference = window_error(fused(rows), rows) - plain
            se = float(difference.std() / difference.numel() ** 0.5)
            print(
                f"  {label:<10} pair {float(plain.mean()):.4f}  fused - pair "
                f"{float(difference.mean()):+.4f} ± {se:.4f}"
            )


def main() -> None:
    """Parse arguments and run every requested data set."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="./bench_store")
    parser.add_argument("--datasets", default="m3,tourism,m1")
    parser.add_argument("--max-series", default="", help="e.g. m3=400")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    limits = {k: int(v) for k, _, v in (p.partition("=") for p in args.max_series.split(",") if p)}
    torch.set_num_threads(1)
    store = Store.open(args.store)
    for name in (d for d in args.datasets.split(",") if d):
        run(name, store, limits.get(name), args.seed)


if __name__ == "__main__":
    main()
