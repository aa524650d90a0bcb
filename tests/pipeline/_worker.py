"""Subprocess entry points for the fault tests: python -m tests.pipeline._worker JOB STORE ..."""

from __future__ import annotations

import sys
import time

import torch

from moe.experts.base import ExpertForecast
from moe.experts.fake import FakeForecaster, fake_trio
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.retrain import retrain
from storage import Store


class SlowFake(FakeForecaster):
    """A fake that takes ``delay`` seconds per call, so a kill lands mid-run."""

    def __init__(self, name: str, factor: float, offset: float, delay: float) -> None:
        super().__init__(name, factor, offset)
        self.delay = delay

    def forecast(self, context: torch.Tensor, horizon: int) -> ExpertForecast:
        time.sleep(self.delay)
        return super().forecast(context, horizon)


def slow_trio(delay: float) -> list[FakeForecaster]:
    return [SlowFake(e.name, e.factor, e.offset, delay) for e in fake_trio()]


def main(argv: list[str]) -> None:
    job, root = argv[0], argv[1]
    store = Store.open(root)
    if job == "forecast":
        run_id, chunk, delay = argv[2], int(argv[3]), float(argv[4])
        config = ForecastConfig(run_id=run_id, chunk_size=chunk)
        batch_forecast(store, config, experts=slow_trio(delay))
    elif job == "retrain":
        config = RetrainConfig.model_validate_json(argv[2])
        retrain(store, config, experts=slow_trio(float(argv[3])))
    print("done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
