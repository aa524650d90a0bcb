"""Latency and throughput of ``moe api`` for single-series requests, offline experts.

Builds a store from the bundled real sample (M3 monthly), retrains a champion on the
offline experts (``--experts``), starts ``moe api`` as a user would (its own process), then
sends one-series ``POST /v1/forecast`` requests: first one client at a time (latency
p50/p99), then ``--clients`` concurrent clients (requests per second, mean series per model
call read from ``/health``). Each request carries one of the sample's series, in turn.

Example::

    python benchmarks/bench_api.py                        # 60 series, 200 requests per row
    python benchmarks/bench_api.py --clients 1 4 16 --requests 400
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from cli.commands import sample_path  # noqa: E402
from pipeline.config import RetrainConfig  # noqa: E402
from pipeline.retrain import retrain  # noqa: E402
from storage import Store  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _sample(n_series: int, directory: Path) -> tuple[Path, list[list[float]]]:
    """The first ``n_series`` sample series with two windows of 36 + 18 points, and values."""
    lines = [
        line
        for line in gzip.open(sample_path(), "rt").read().splitlines()
        if len(json.loads(line)["sequence"]) >= 36 + 2 * 18
    ][:n_series]
    path = directory / "sample.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line)["sequence"] for line in lines]


def _start(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    command = [sys.executable, "-m", "cli", "--store", str(store), "api"]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("moe api did not start")


def _run_clients(
    client: httpx.Client, url: str, series: list[list[float]], clients: int, requests: int
) -> tuple[list[float], float]:
    """Per-request latencies (s) and wall time of ``requests`` requests from ``clients``."""

    def one(index: int) -> float:
        body = {"series": [{"values": series[index % len(series)]}]}
        began = time.perf_counter()
        response = client.post(f"{url}/v1/forecast", json=body, timeout=120)
        response.raise_for_status()
        return time.perf_counter() - began

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = list(pool.map(one, range(requests)))
    return latencies, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=60)
    parser.add_argument("--experts", default="seasonal_naive,autoets,autotheta")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        data, series = _sample(args.series, directory)
        config = RetrainConfig(
            jsonl_paths=[str(data)],
            experts=args.experts.split(","),
            input_length=36,
            pred_length=18,
            season_length=12,
            forecast_after=False,
        )
        began = time.perf_counter()
        result = retrain(Store.open(directory / "store"), config)
        print(f"champion {result.model_version} in {time.perf_counter() - began:.0f} s")
        process, url = _start(directory / "store")
        try:
            limits = httpx.Limits(max_connections=max(args.clients))
            with httpx.Client(limits=limits) as client:
                _run_clients(client, url, series, 1, 20)  # warm-up (JIT, first loads)
                print(
                    f"\n{args.requests} one-series requests per row, experts {args.experts}, "
                    "input 36, horizon 18\n"
                )
                print("| clients | requests/s | p50 ms | p99 ms | series per model call |")
                print("|---|---|---|---|---|")
                for clients in args.clients:
                    before = client.get(f"{url}/health").json()["batching"]
                    latencies, wall = _run_clients(client, url, series, clients, args.requests)
                    after = client.get(f"{url}/health").json()["batching"]
                    per_call = (after["requests"] - before["requests"]) / max(
                        1, after["calls"] - before["calls"]
                    )
                    ordered = sorted(latencies)
                    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
                    print(
                        f"| {clients} | {args.requests / wall:.1f} | "
                        f"{1000 * statistics.median(ordered):.1f} | {1000 * p99:.1f} | "
                        f"{per_call:.1f} |"
                    )
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
