"""Time to read N cached windows x E experts x H steps back into tensors.

Usage: ``python benchmarks/bench_cache_read.py [--windows 100000] [--horizon 64]``
Target (issue 3): under 2 s for 100,000 windows x 3 experts x 64 steps on this CPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe.experts.base import QUANTILE_LEVELS  # noqa: E402
from storage import Store  # noqa: E402
from storage.cache import CachedModel, read_forecasts, window_hashes, write_forecasts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=100_000)
    parser.add_argument("--horizon", type=int, default=64)
    parser.add_argument("--input-length", type=int, default=512)
    args = parser.parse_args()
    n, h, q = args.windows, args.horizon, len(QUANTILE_LEVELS)
    root = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    try:
        store = Store.open(root)
        rng = np.random.default_rng(0)
        context = rng.normal(size=(n, args.input_length)).astype(np.float32)
        t0 = time.perf_counter()
        hashes = window_hashes(context)
        hash_seconds = time.perf_counter() - t0
        experts = ["moirai", "timemoe", "timesfm"]
        models = [CachedModel(e, f"{e}@bench", args.input_length, h) for e in experts]
        for model in models:  # parts of 8192 rows, as precompute writes them
            with_quantiles = model.expert != "timemoe"  # Time-MoE is point-only
            for begin in range(0, n, 8192):
                rows = slice(begin, min(begin + 8192, n))
                m = rows.stop - rows.start
                quantiles = (
                    rng.normal(size=(m, h, q)).astype(np.float32) if with_quantiles else None
                )
                write_forecasts(
                    store,
                    model,
                    hashes[rows],
                    rng.normal(size=(m, h)).astype(np.float32),
                    quantiles,
                )
        order = rng.permutation(n)  # ask in a different order than written
        wanted = [hashes[i] for i in order]
        print(f"{'windows':>8} {'experts':>7} {'H':>3} {'what':>22} {'seconds':>8} {'target':>7}")
        print(f"{n:>8} {3:>7} {h:>3} {'hash (N, L) contexts':>22} {hash_seconds:>8.2f}")
        for label, n_quantiles in (("points (N,E,H)", None), ("points + quantiles", q)):
            t0 = time.perf_counter()
            points, _, found = read_forecasts(store, models, wanted, n_quantiles)
            seconds = time.perf_counter() - t0
            assert found.all() and points.shape == (n, 3, h)
            print(f"{n:>8} {3:>7} {h:>3} {label:>22} {seconds:>8.2f} {'< 2 s':>7}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
