"""A mixture of frozen forecasting experts with a learned top-2 gate.

The public names below load lazily (module ``__getattr__``), so ``import moe`` imports
neither torch nor any expert library until one of them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "load_jsonl",
    "TimeSeriesDataset",
    "MoiraiMoEExpert",
    "TimeMoEExpert",
    "TimesFMExpert",
    "MoERouter",
    "train_and_save",
    "predict_from_model",
]

_WHERE = {
    "load_jsonl": "moe.seed.data",
    "TimeSeriesDataset": "moe.seed.data",
    "MoiraiMoEExpert": "moe.seed.experts",
    "TimeMoEExpert": "moe.seed.experts",
    "TimesFMExpert": "moe.seed.experts",
    "MoERouter": "moe.router",
    "train_and_save": "moe.seed.api",
    "predict_from_model": "moe.seed.api",
}

if TYPE_CHECKING:
    from moe.router import MoERouter
    from moe.seed.api import predict_from_model, train_and_save
    from moe.seed.data import TimeSeriesDataset, load_jsonl
    from moe.seed.experts import MoiraiMoEExpert, TimeMoEExpert, TimesFMExpert


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'moe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
