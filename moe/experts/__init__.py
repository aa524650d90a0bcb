"""Forecasting experts behind one protocol and an explicit registry (seed classes: ``moe.seed``).

Importing this package is cheap: expert libraries (statsforecast, fracast, uni2ts, sktime,
transformers, timesfm) load only when ``build_expert`` builds an expert that needs them.
"""

from moe.experts.base import (
    QUANTILE_LEVELS,
    Expert,
    ExpertCapabilities,
    ExpertConfig,
    ExpertForecast,
    ExpertLoadError,
    MissingExtraError,
)
from moe.experts.registry import (
    DEFAULT_POOL,
    EXPERT_NAMES,
    FOUNDATION_EXPERTS,
    OFFLINE_DEFAULT,
    OFFLINE_EXPERTS,
    TRAINED_EXPERTS,
    build_expert,
    resolve_experts,
)

__all__ = [
    "QUANTILE_LEVELS",
    "Expert",
    "ExpertCapabilities",
    "ExpertConfig",
    "ExpertForecast",
    "ExpertLoadError",
    "MissingExtraError",
    "DEFAULT_POOL",
    "EXPERT_NAMES",
    "FOUNDATION_EXPERTS",
    "OFFLINE_EXPERTS",
    "TRAINED_EXPERTS",
    "OFFLINE_DEFAULT",
    "build_expert",
    "resolve_experts",
]
