"""The explicit expert registry: registry name -> ``"module:function"`` building it.

Plain data, imported lazily: looking a name up imports only that expert's module, so
``import moe.experts`` never pulls in statsforecast, uni2ts, transformers or timesfm.
Each builder takes an ``ExpertConfig`` and returns an ``Expert``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from moe.experts.base import Expert, ExpertConfig

__all__ = [
    "EXPERT_NAMES",
    "EXTRA_STATISTICAL_EXPERTS",
    "FOUNDATION_EXPERTS",
    "OFFLINE_EXPERTS",
    "TRAINED_EXPERTS",
    "build_expert",
]

_BUILDERS: dict[str, str] = {
    "moirai": "moe.experts.moirai:build",
    "timemoe": "moe.experts.timemoe:build",
    "timesfm": "moe.experts.timesfm:build",
    "seasonal_naive": "moe.experts.statistical:build_seasonal_naive",
    "autoets": "moe.experts.statistical:build_autoets",
    "autotheta": "moe.experts.statistical:build_autotheta",
    "dynamic_theta": "moe.experts.statistical:build_dynamic_theta",
    "autoces": "moe.experts.statistical:build_autoces",
    "autoarima": "moe.experts.statistical:build_autoarima",
    "fracast": "moe.experts.fracast_expert:build",
    "global_mlp": "moe.experts.global_mlp:build",
}

#: The seed's pretrained foundation models, in the seed's ``expert_keys`` order.
FOUNDATION_EXPERTS: tuple[str, ...] = ("moirai", "timemoe", "timesfm")
#: Experts that need no download: statsforecast models and fracast's bundled weights.
OFFLINE_EXPERTS: tuple[str, ...] = ("seasonal_naive", "autoets", "autotheta", "fracast")
#: More statsforecast models, offline like the above, registered for a wider pool (not in
#: the default pool; docs/ACCURACY.md measures them).
EXTRA_STATISTICAL_EXPERTS: tuple[str, ...] = ("dynamic_theta", "autoces", "autoarima")
#: Experts the retrain trains on the training windows (built from the checkpoint it saves).
TRAINED_EXPERTS: tuple[str, ...] = ("global_mlp",)
#: Every registered name.
EXPERT_NAMES: tuple[str, ...] = (
    FOUNDATION_EXPERTS + OFFLINE_EXPERTS + EXTRA_STATISTICAL_EXPERTS + TRAINED_EXPERTS
)

assert set(EXPERT_NAMES) == set(_BUILDERS), "registry and name lists disagree"


def build_expert(name: str, config: ExpertConfig | None = None) -> Expert:
    """Build the expert registered as ``name`` with ``config`` (default ``ExpertConfig()``).

    Raises:
        ValueError: ``name`` is not registered (the message lists the valid names).
        MissingExtraError: the expert's library is not installed (names the extra).
        ExpertLoadError: its weights could not be found or loaded.
    """
    target = _BUILDERS.get(name)
    if target is None:
        raise ValueError(f"unknown expert {name!r}; valid names: {', '.join(EXPERT_NAMES)}")
    module_name, function_name = target.split(":")
    builder = cast(
        Callable[[ExpertConfig], Expert],
        getattr(importlib.import_module(module_name), function_name),
    )
    expert = builder(config if config is not None else ExpertConfig())
    if not isinstance(expert, Expert) or expert.name != name:
        raise TypeError(
            f"{target} must return an Expert named {name!r}, got {type(expert).__name__} "
            f"named {getattr(expert, 'name', None)!r}"
        )
    return expert
