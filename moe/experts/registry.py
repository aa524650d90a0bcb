"""The explicit expert registry: registry name -> ``"module:function"`` building it.

Plain data, imported lazily: looking a name up imports only that expert's module, so
``import moe.experts`` never pulls in statsforecast, uni2ts, transformers or timesfm.
Each builder takes an ``ExpertConfig`` and returns an ``Expert``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Literal, cast

from moe.experts.base import Expert, ExpertConfig, ExpertLoadError, MissingExtraError

__all__ = [
    "EXPERT_NAMES",
    "EXTRA_STATISTICAL_EXPERTS",
    "FOUNDATION_EXPERTS",
    "OFFLINE_EXPERTS",
    "OFFLINE_DEFAULT",
    "DEFAULT_POOL",
    "TRAINED_EXPERTS",
    "build_expert",
    "resolve_experts",
    "check_pool",
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
    "stat_ensemble": "moe.experts.statistical:build_stat_ensemble",
    "fracast": "moe.experts.fracast_expert:build",
    "global_mlp": "moe.experts.global_mlp:build",
    "global_trees": "moe.experts.global_trees:build",
}

#: The seed's pretrained foundation models, in the seed's ``expert_keys`` order.
FOUNDATION_EXPERTS: tuple[str, ...] = ("moirai", "timemoe", "timesfm")
#: Experts that need no download: statsforecast models and fracast's bundled weights.
OFFLINE_EXPERTS: tuple[str, ...] = ("seasonal_naive", "autoets", "autotheta", "fracast")
#: More statsforecast models, offline like the above, registered for a wider pool (not in
#: the default pool; docs/ACCURACY.md measures them).
EXTRA_STATISTICAL_EXPERTS: tuple[str, ...] = (
    "dynamic_theta",
    "autoces",
    "autoarima",
    "stat_ensemble",
)
#: Experts the retrain trains on the training windows (built from the checkpoint it saves).
TRAINED_EXPERTS: tuple[str, ...] = ("global_mlp", "global_trees")
#: The retrain's default pool (``RetrainConfig.experts``): offline, and the pool with the
#: lowest mean MASE against the better of AutoETS/AutoTheta on the development split of M3,
#: Tourism and M1 monthly through ``moe retrain`` (docs/ACCURACY.md "accuracy10"): the
#: combination ``stat_ensemble`` replaces AutoETS and sits beside AutoTheta, fracast and
#: seasonal naive, so a routed pair can hold up to four statistical fits and fracast.
DEFAULT_POOL: tuple[str, ...] = ("seasonal_naive", "autotheta", "fracast", "stat_ensemble")
#: Experts used by ``experts="auto"`` when the foundation experts cannot load.
#: The same pool as the retrain's default, so the seed's command line and ``moe retrain``
#: choose among the same experts on a machine without foundation weights.
OFFLINE_DEFAULT: tuple[str, ...] = DEFAULT_POOL
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


def resolve_experts(
    experts: Literal["auto"] | Sequence[str | Expert] | None,
    device: str = "cpu",
    expert_config: ExpertConfig | None = None,
) -> list[Expert]:
    """Experts from names (registry), objects (passed through) or ``"auto"``: the one resolver.

    ``None`` means the seed's three foundation experts. ``"auto"`` tries those and, when any
    cannot load (weights not downloaded, library missing), falls back to ``OFFLINE_DEFAULT``
    and says so on stderr (never silently). At least two distinct names are required.
    """
    config = (expert_config or ExpertConfig()).model_copy(update={"device": str(device)})
    if experts == "auto":
        try:
            return [build_expert(name, config) for name in FOUNDATION_EXPERTS]
        except (ExpertLoadError, MissingExtraError) as error:
            print(
                f"foundation experts {', '.join(FOUNDATION_EXPERTS)} unavailable ({error}); "
                f"using offline experts {', '.join(OFFLINE_DEFAULT)}",
                file=sys.stderr,
            )
            return [build_expert(name, config) for name in OFFLINE_DEFAULT]
    chosen = FOUNDATION_EXPERTS if experts is None else experts
    built = [build_expert(item, config) if isinstance(item, str) else item for item in chosen]
    check_pool([expert.name for expert in built])
    return built


def check_pool(names: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``names`` are at least two distinct expert names."""
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"need at least two experts with distinct names, got {list(names)}")
