"""Weights resolution and input checks shared by the expert adapters.

Moirai-MoE, TimesFM and Time-MoE find their weights the same way: ``ExpertConfig.checkpoint``,
else the expert's environment variable, else its default hub id. An existing local directory
is used as it is and labelled by a content hash of its weight files; a string that looks like
a path but names no directory is an error; anything else is a hub id, resolved through
``huggingface_hub.snapshot_download`` (only the local hub cache when ``HF_HUB_OFFLINE`` is
set) and labelled by the snapshot's commit hash. Every miss raises ``ExpertLoadError`` naming
the expert, the checkpoint, the revision, where it looked and how to provide the weights.

Labels end up in ``Expert.cache_key``, which keys the forecast cache: each adapter keeps its
own label format (``WeightsSpec.local_revision``) so that existing caches stay valid.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from moe.experts.base import ExpertConfig, ExpertLoadError

__all__ = [
    "Source",
    "WeightsSpec",
    "check_device",
    "check_inputs",
    "check_observed_rows",
    "fingerprint",
    "how_to_provide",
    "resolve_weights",
]

_log = logging.getLogger(__name__)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class WeightsSpec:
    """Where one expert's weights come from and what its checkpoint directory holds."""

    expert: str
    """Name used in error messages, e.g. ``"Moirai-MoE"``."""
    env_var: str
    """Environment variable naming a checkpoint when ``ExpertConfig.checkpoint`` is None."""
    default_checkpoint: str
    """Hub id used when neither the config nor ``env_var`` names a checkpoint."""
    hub_patterns: tuple[str, ...]
    """``allow_patterns`` of the hub download: only these files are fetched."""
    required: tuple[str, ...]
    """Glob patterns that must each match a file of a checkpoint directory (may be empty)."""
    layout: str
    """What a local directory must hold, in words, for the how-to text."""
    local_revision: Callable[[Path], str]
    """Content label of a local directory (e.g. ``sha256:<16 hex>``); part of the cache key."""
    validate: Callable[[Path], None] | None = None
    """Further check of a checkpoint directory, run before it is hashed; raises on a misfit."""


@dataclass(frozen=True)
class Source:
    """Resolved weights: a local directory, what was asked for, and its exact revision."""

    directory: Path
    checkpoint: str  # the hub id, or the resolved absolute directory
    revision: str  # snapshot commit hash, or the content label of a local directory

    @property
    def identity(self) -> str:
        """``<checkpoint>@<revision>``."""
        return f"{self.checkpoint}@{self.revision}"


def resolve_weights(spec: WeightsSpec, config: ExpertConfig) -> Source:
    """Find the configured weights as a local directory, or raise ``ExpertLoadError`` saying how.

    ``config.revision`` pins a hub commit or tag; it is ignored (with a warning) for a local
    directory.
    """
    checkpoint = config.checkpoint or os.environ.get(spec.env_var) or spec.default_checkpoint
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        if config.revision is not None:
            _log.warning(
                "%s: revision %r ignored for local directory %s", spec.expert, config.revision, path
            )
        _check_directory(spec, path)
        return Source(path, str(path.resolve()), spec.local_revision(path))
    if _looks_like_path(checkpoint):
        raise ExpertLoadError(
            f"{spec.expert} checkpoint directory {checkpoint!r} does not exist"
            f" (resolved to {path.resolve()}). {how_to_provide(spec)}"
        )
    directory = _snapshot(spec, checkpoint, config.revision)
    _check_directory(spec, directory)
    return Source(directory, checkpoint, directory.name)  # snapshot folders are commit hashes


def how_to_provide(
    spec: WeightsSpec, checkpoint: str | None = None, revision: str | None = None
) -> str:
    """The fix-it sentence of every load error (``checkpoint`` defaults to the expert's)."""
    hub_id = checkpoint or spec.default_checkpoint
    pin = f" --revision {revision}" if revision else ""
    return (
        f"Provide them by downloading once with network access (`hf download {hub_id}{pin}`,"
        f" formerly `huggingface-cli download {hub_id}{pin}`; later runs then work offline,"
        " with HF_HUB_OFFLINE=1, from the hub cache), or point ExpertConfig(checkpoint=...)"
        f" or the environment variable {spec.env_var} at a local directory holding {spec.layout}."
    )


def fingerprint(files: Sequence[Path], *, digits: int = 16, with_names: bool = False) -> str:
    """First ``digits`` hex digits of a SHA-256 over the bytes of ``files``, in their order.

    With ``with_names`` each file's name is hashed just before its bytes. Callers must never
    change what they hash: the result keys cached forecasts.
    """
    digest = hashlib.sha256()
    for file in files:
        if with_names:
            digest.update(file.name.encode())
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()[:digits]


def check_device(device: str, expert: str) -> torch.device:
    """``device`` parsed; ``ValueError`` when it names CUDA and CUDA is not available."""
    parsed = torch.device(device)
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{expert} device {device!r} requested but CUDA is not available")
    return parsed


def check_inputs(context: torch.Tensor, horizon: int, expert: str) -> None:
    """Reject a malformed ``forecast`` call with ``ValueError`` naming ``expert`` and the problem.

    ``context`` must be a floating ``(B, L)`` tensor with ``L >= 1`` and no ``+-inf`` (NaN is
    allowed: it marks missing values); ``horizon`` a positive int (not a bool).
    """
    if not isinstance(context, torch.Tensor) or context.ndim != 2:
        shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context)
        raise ValueError(f"{expert} context must be a 2-D tensor (B, L), got {shape}")
    if not context.is_floating_point():
        raise ValueError(f"{expert} context must be floating point (float32), got {context.dtype}")
    if context.shape[1] == 0:
        raise ValueError(f"{expert} context must have at least one column, got (B, 0)")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(f"{expert} horizon must be a positive int, got {horizon!r}")
    if torch.isinf(context).any():
        raise ValueError(f"{expert} context contains +-inf; only NaN may mark missing values")


def check_observed_rows(context: torch.Tensor, expert: str, where: str = "") -> None:
    """``ValueError`` naming the rows (first 10) of ``context`` ``(B, L)`` that are all NaN.

    ``where`` is appended to the message, e.g. ``" in their last 512 steps"``.
    """
    empty_rows = torch.isnan(context).all(dim=1).nonzero().flatten()
    if empty_rows.numel():
        raise ValueError(
            f"{expert} context rows {empty_rows[:10].tolist()} have no observed value"
            f" (all NaN){where}"
        )


def _snapshot(spec: WeightsSpec, hub_id: str, revision: str | None) -> Path:
    """The hub snapshot folder of ``hub_id`` at ``revision`` (downloaded unless offline)."""
    from huggingface_hub import constants, snapshot_download

    # huggingface_hub reads HF_HUB_OFFLINE once, at its import: read it again now
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    offline = offline or constants.HF_HUB_OFFLINE
    try:
        return Path(
            snapshot_download(
                hub_id,
                revision=revision,
                allow_patterns=list(spec.hub_patterns),
                local_files_only=offline,
            )
        )
    except Exception as error:  # hub errors vary (offline miss, unknown repo, auth, network)
        where = (
            " only (HF_HUB_OFFLINE is set, so the hub was not contacted)"
            if offline
            else " and on the hub"
        )
        raise ExpertLoadError(
            f"{spec.expert} weights {hub_id!r} (revision {revision or 'main'!r}) were not found:"
            f" looked in the Hugging Face cache {constants.HF_HUB_CACHE}{where}"
            f" ({type(error).__name__}: {error}). {how_to_provide(spec, hub_id, revision)}"
        ) from error


def _check_directory(spec: WeightsSpec, directory: Path) -> None:
    """Refuse a directory lacking a file for one of ``spec.required``, then ``spec.validate``."""
    missing = [
        pattern
        for pattern in spec.required
        if not any(file.is_file() for file in directory.glob(pattern))
    ]
    if missing:
        raise ExpertLoadError(
            f"{spec.expert} checkpoint directory {directory} lacks {missing};"
            f" found {sorted(p.name for p in directory.iterdir())}. {how_to_provide(spec)}"
        )
    if spec.validate is not None:
        spec.validate(directory)


def _looks_like_path(checkpoint: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a directory."""
    return checkpoint.startswith((".", "~", "/")) or "\\" in checkpoint or checkpoint.count("/") > 1
