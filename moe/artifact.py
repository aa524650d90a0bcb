"""The gate's ``.pt`` file: weights plus everything needed to trust and reproduce them.

Plain data only (tensors, str, int, float, bool, None, lists, dicts), written with
``torch.save`` and read with ``torch.load(weights_only=True)``: a file that carries a
pickled object is refused. Keys (format version 1):

* the seed's: ``gating_state`` (gate ``state_dict``), ``expert_keys`` (ordered names),
  ``pred_length``, ``input_length``;
* ``format_version``; ``gate`` (kind and hyperparameters that rebuild it, via
  ``moe.gates.build_gate_from_spec``; the feature-pair gate adds ``season_length``,
  ``hidden``, ``use_history``, ``learned_weights`` and its ``features`` list);
* ``experts``: per expert ``{"name", "cache_key", "config"}`` (checkpoint, revision, ...),
  and ``cache_keys`` (the same keys as a list, for readers);
* ``scaling`` (``{"method": "mean_abs"}``), ``quantile_levels``;
* ``train_config``, ``metrics`` (per-epoch history, single-expert baselines, and, when
  the gate came from ``moe.selection.fit_gate``, ``selection``: every candidate's
  validation MASE, paired SE and which one the one-SE rule chose);
* ``data_fingerprint`` (sha256 of windows and cached forecasts), ``library_versions``,
  ``created_at``;
* optional, absent from older files (read as ``{}``): ``season`` (how each series' season
  length is chosen: ``{"mode": "per_series", "forced": int | None}``; ``{}`` means the
  experts' configured season for every series) and ``intervals`` (quantile fills and
  conformal factors, see ``moe.intervals``).

A file written by the seed (no ``format_version``, only the seed's four keys, an
``nn.Linear`` state with raw-value inputs) loads as format 0 with ``scaling = "none"``.
"""

from __future__ import annotations

import hashlib
import pickle
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from moe.experts.base import QUANTILE_LEVELS
from moe.gates import build_gate_from_spec

__all__ = [
    "FORMAT_VERSION",
    "ArtifactError",
    "GateArtifact",
    "save_artifact",
    "load_artifact",
    "validate_artifact",
    "MAX_INPUT_LENGTH",
    "MAX_PRED_LENGTH",
    "data_fingerprint",
    "library_versions",
]

#: Version written by ``save_artifact``; ``load_artifact`` reads this one and 0 (the seed's).
FORMAT_VERSION = 1
_SUPPORTED_VERSIONS = (0, 1)
_SEED_KEYS = ("gating_state", "expert_keys", "pred_length", "input_length")
_REQUIRED_V1 = (*_SEED_KEYS, "format_version", "gate", "experts", "scaling")
#: Bounds checked before anything is allocated from a file (the retrain config's limits).
MAX_INPUT_LENGTH = 4096
MAX_PRED_LENGTH = 1024
_MAX_EXPERTS = 64
_MAX_GATE_WIDTH = 4096
_MAX_GATE_HEADS = 64


class ArtifactError(ValueError):
    """A model file cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class GateArtifact:
    """In-memory form of the ``.pt`` file (see the module docstring for the keys)."""

    gating_state: dict[str, torch.Tensor]
    expert_keys: list[str]
    input_length: int
    pred_length: int
    gate: dict[str, Any]
    experts: list[dict[str, Any]]
    scaling: dict[str, Any] = field(default_factory=lambda: {"method": "mean_abs"})
    quantile_levels: list[float] = field(default_factory=lambda: list(QUANTILE_LEVELS))
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    format_version: int = FORMAT_VERSION
    season: dict[str, Any] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_keys(self) -> list[str | None]:
        """Each expert's cache key (checkpoint and revision), in ``expert_keys`` order."""
        return [entry.get("cache_key") for entry in self.experts]

    def build_gate(self) -> nn.Module:
        """The trained gate, rebuilt from ``gate`` and loaded with ``gating_state`` (eval mode)."""
        spec = self.gate
        gate = build_gate_from_spec(
            spec, self.input_length, self.pred_length, len(self.expert_keys)
        )
        try:
            gate.load_state_dict(self.gating_state)
        except RuntimeError as error:
            raise ArtifactError(
                f"gating_state does not fit a {spec['kind']} gate: {error}"
            ) from error
        return gate.eval()

    def to_dict(self) -> dict[str, Any]:
        """The plain dict written to disk."""
        return {
            "format_version": self.format_version,
            "gating_state": {
                k: v.detach().cpu().contiguous() for k, v in self.gating_state.items()
            },
            "expert_keys": list(self.expert_keys),
            "input_length": int(self.input_length),
            "pred_length": int(self.pred_length),
            "gate": dict(self.gate),
            "experts": [dict(entry) for entry in self.experts],
            "cache_keys": self.cache_keys,  # derived from "experts"; at the top for readers
            "scaling": dict(self.scaling),
            "quantile_levels": [float(q) for q in self.quantile_levels],
            "train_config": dict(self.train_config),
            "metrics": dict(self.metrics),
            "data_fingerprint": dict(self.data_fingerprint),
            "library_versions": dict(self.library_versions),
            "created_at": self.created_at,
            "season": dict(self.season),
            "intervals": dict(self.intervals),
        }


def library_versions() -> dict[str, str]:
    """Versions that decide the numbers: python, torch, numpy and the expert libraries present."""
    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion (str subclass) would need pickling
        "numpy": str(np.__version__),
    }
    for package in (
        "moe",
        "pydantic",
        "statsforecast",
        "fracast",
        "timecopilot-uni2ts",
        "sktime",
        "transformers",
        "timesfm",
    ):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def data_fingerprint(
    context: torch.Tensor, target: torch.Tensor, points: torch.Tensor, expert_keys: Sequence[str]
) -> dict[str, Any]:
    """sha256 over the training windows and cached forecasts, plus their shapes.

    ``context`` ``(N, L)``, ``target`` ``(N, H)``, ``points`` ``(N, E, H)``; float32 bytes in
    row-major order, so the same windows and forecasts always give the same digest.
    """
    digest = hashlib.sha256()
    digest.update(",".join(expert_keys).encode())
    for tensor in (context, target, points):
        array = tensor.detach().cpu().to(torch.float32).contiguous().numpy()
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return {
        "sha256": digest.hexdigest(),
        "windows": int(context.shape[0]),
        "context_shape": list(context.shape),
        "points_shape": list(points.shape),
    }


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain data that ``weights_only=True`` loads, or ``TypeError`` naming ``where``.

    str subclasses (e.g. ``torch.__version__``) and numpy scalars are converted; tuples
    become lists; anything else that is not a tensor or a builtin scalar is refused.
    """
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous()
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Mapping):
        plain: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"artifact key {where}[{key!r}] must be a str")
            plain[str(key)] = _plain(item, f"{where}[{key!r}]")
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise TypeError(f"artifact value {where} is a {type(value).__name__}; only plain data is saved")


def save_artifact(artifact: GateArtifact, path: str | Path) -> Path:
    """Write ``artifact`` to ``path`` (via a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = _plain(artifact.to_dict(), "artifact")
    if not payload["created_at"]:
        payload["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"model file {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ArtifactError(
            f"model file {str(path)!r} was refused: it carries a pickled Python object, and only "
            f"tensors and plain data are loaded (weights_only=True). Details: {error}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ArtifactError(
            f"model file {str(path)!r} is not a readable torch file: {error}"
        ) from error


def _check_keys(path: Path, raw: Mapping[str, Any], required: Sequence[str]) -> None:
    missing = [key for key in required if key not in raw]
    if missing:
        raise ArtifactError(f"model file {str(path)!r} lacks required keys {missing}")


def load_artifact(path: str | Path) -> GateArtifact:
    """Read and validate a model file; ``ArtifactError`` names the file and the problem."""
    path = Path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise ArtifactError(
            f"model file {str(path)!r} holds a {type(raw).__name__}, expected a dict"
        )
    version = raw.get("format_version", 0)
    if version not in _SUPPORTED_VERSIONS:
        raise ArtifactError(
            f"model file {str(path)!r} has format_version {version!r}; this library reads "
            f"{list(_SUPPORTED_VERSIONS)} (a newer library wrote it: upgrade moe)"
        )
    if version == 0:
        _check_keys(path, raw, _SEED_KEYS)
        state = {f"linear.{k}": v for k, v in raw["gating_state"].items()}
        artifact = GateArtifact(
            gating_state=state,
            expert_keys=list(raw["expert_keys"]),
            input_length=int(raw["input_length"]),
            pred_length=int(raw["pred_length"]),
            gate={"kind": "linear"},
            experts=[
                {"name": name, "cache_key": None, "config": {}} for name in raw["expert_keys"]
            ],
            scaling={"method": "none"},  # the seed's gate was trained on raw values
            format_version=0,
        )
    else:
        _check_keys(path, raw, _REQUIRED_V1)
        fields = {key: raw[key] for key in GateArtifact.__dataclass_fields__ if key in raw}
        artifact = GateArtifact(**fields)
    validate_artifact(artifact, f"model file {str(path)!r}")
    if len(artifact.experts) != len(artifact.expert_keys):
        raise ArtifactError(
            f"model file {str(path)!r}: {len(artifact.experts)} expert entries for "
            f"{len(artifact.expert_keys)} expert_keys"
        )
    try:
        artifact.build_gate()  # fail early, naming the file, when the weights do not fit
    except (ValueError, KeyError) as error:
        raise ArtifactError(f"model file {str(path)!r}: {error}") from error
    return artifact


def _bounded_int(value: Any, name: str, low: int, high: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ArtifactError(f"{where}: {name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def validate_artifact(artifact: GateArtifact, where: str = "model") -> None:
    """Raise ``ArtifactError`` unless ``artifact`` is internally consistent and bounded.

    Checked before any gate is built, so a hostile file cannot make us allocate: lengths
    within ``MAX_INPUT_LENGTH``/``MAX_PRED_LENGTH``, gate width/heads bounded; distinct
    ``expert_keys`` (at least 2) that name the ``experts`` entries in order; every gate
    weight a finite floating tensor; quantile levels finite and in (0, 1).
    """
    _bounded_int(artifact.input_length, "input_length", 1, MAX_INPUT_LENGTH, where)
    _bounded_int(artifact.pred_length, "pred_length", 1, MAX_PRED_LENGTH, where)
    keys = artifact.expert_keys
    if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
        raise ArtifactError(f"{where}: expert_keys must be a list of names, got {keys!r}")
    if not 2 <= len(keys) <= _MAX_EXPERTS or len(set(keys)) != len(keys):
        raise ArtifactError(
            f"{where}: expert_keys must be 2..{_MAX_EXPERTS} distinct names, got {keys}"
        )
    entries = artifact.experts
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ArtifactError(f"{where}: experts must be a list of dicts")
    names = [entry.get("name") for entry in entries]
    if names != keys:
        raise ArtifactError(
            f"{where}: expert_keys {keys} disagree with the experts list {names} "
            "(the gate's outputs would be matched to the wrong experts)"
        )
    gate = artifact.gate
    if not isinstance(gate, dict) or not isinstance(gate.get("kind"), str):
        raise ArtifactError(f"{where}: gate must be a dict with a 'kind', got {gate!r}")
    if "width" in gate:
        _bounded_int(gate["width"], "gate width", 1, _MAX_GATE_WIDTH, where)
    if "heads" in gate:
        _bounded_int(gate["heads"], "gate heads", 1, _MAX_GATE_HEADS, where)
    if not isinstance(artifact.scaling, dict) or not isinstance(
        artifact.scaling.get("method"), str
    ):
        raise ArtifactError(f"{where}: scaling must be a dict with a 'method'")
    state = artifact.gating_state
    if not isinstance(state, dict) or not state:
        raise ArtifactError(f"{where}: gating_state must be a non-empty dict of tensors")
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.is_complex():
            raise ArtifactError(f"{where}: gating_state[{name!r}] is not a real tensor")
        # Integer buffers (e.g. the feature-pair gate's pair index) are finite by type.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ArtifactError(
                f"{where}: gating_state[{name!r}] holds NaN or infinite weights; "
                "the gate would forecast NaN: retrain it"
            )
    levels = artifact.quantile_levels
    if not isinstance(levels, list) or not all(
        isinstance(q, (int, float)) and not isinstance(q, bool) and 0.0 < q < 1.0 for q in levels
    ):
        raise ArtifactError(f"{where}: quantile_levels must be numbers in (0, 1), got {levels!r}")
