"""The load scaffold shared by the expert adapters: extras, weights, device, dtype, labels.

Moirai-MoE, TimesFM and Time-MoE find their weights the same way: ``ExpertConfig.checkpoint``,
else the expert's environment variable, else its default hub id. An existing local directory
is used as it is and labelled by a content hash of its weight files; a string that looks like
a path but names no directory is an error; anything else is a hub id, resolved through
``huggingface_hub.snapshot_download`` (only the local hub cache when ``HF_HUB_OFFLINE`` is
set) and labelled by the snapshot's commit hash. Every miss raises ``ExpertLoadError`` naming
the expert, the checkpoint, the revision, where it looked and how to provide the weights.

``load_weights`` is the whole ``build()`` scaffold of those adapters (dtype and device
checked, weights resolved, the family's loader run with its failures wrapped into
``ExpertLoadError``, the model moved to the device); ``import_extra`` turns a missing
library into ``MissingExtraError``; ``from_pretrained_strict`` refuses a transformers
checkpoint that would leave weights randomly initialised. Each adapter keeps only its
family's loader and forecasting code.

Content labels end up in ``Expert.cache_key``, which keys the forecast cache. There is one
spelling, ``content_revision``: ``sha256:`` + 16 hex digits. Time-MoE wrote ``sha256-`` until
2026-12; ``Source.aliases`` carries that old label (``WeightsSpec.legacy_prefixes``) so its
adapter can name its old cache key (``legacy_cache_keys``) and a store filled by an older
version keeps its cache hits.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import torch
from torch import nn

from moe.experts.base import ExpertConfig, ExpertLoadError, MissingExtraError, torch_dtype

__all__ = [
    "CONTENT_PREFIX",
    "Source",
    "TrainedCheckpoint",
    "WeightsSpec",
    "check_device",
    "check_inputs",
    "check_observed_rows",
    "content_revision",
    "fingerprint",
    "from_pretrained_strict",
    "how_to_provide",
    "import_extra",
    "load_weights",
    "read_trained_checkpoint",
    "resolve_weights",
    "write_checkpoint",
]

_log = logging.getLogger(__name__)
_TRUE = {"1", "true", "yes", "on"}
_ALL_DTYPES = ("float32", "bfloat16", "float16")
#: The one spelling of a local directory's content label (``content_revision``).
CONTENT_PREFIX = "sha256:"

Model = TypeVar("Model", bound=nn.Module)


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
    content_files: Callable[[Path], Sequence[Path]]
    """The files of a local directory whose bytes label it (``content_revision``), in order.
    The label is part of the cache key: never change which files an adapter lists."""
    hash_names: bool = False
    """Hash each file's name before its bytes (Time-MoE's label always did)."""
    legacy_prefixes: tuple[str, ...] = ()
    """Prefixes earlier versions put before the same hex digits (Time-MoE: ``sha256-``)."""
    validate: Callable[[Path], None] | None = None
    """Further check of a checkpoint directory, run before it is hashed; raises on a misfit."""
    dtypes: tuple[str, ...] = _ALL_DTYPES
    """``ExpertConfig.dtype`` names the family runs in."""
    dtype_hint: str = ""
    """Appended to the unsupported-dtype error, e.g. what to use instead."""


@dataclass(frozen=True)
class Source:
    """Resolved weights: a local directory, what was asked for, and its exact revision."""

    directory: Path
    checkpoint: str  # the hub id, or the resolved absolute directory
    revision: str  # snapshot commit hash, or the content label of a local directory
    aliases: tuple[str, ...] = ()  # labels older versions gave this same revision

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
        revision = content_revision(spec.content_files(path), with_names=spec.hash_names)
        digest = revision.removeprefix(CONTENT_PREFIX)
        aliases = tuple(prefix + digest for prefix in spec.legacy_prefixes)
        return Source(path, str(path.resolve()), revision, aliases)
    if _looks_like_path(checkpoint):
        raise ExpertLoadError(
            f"{spec.expert} checkpoint directory {checkpoint!r} does not exist"
            f" (resolved to {path.resolve()}). {how_to_provide(spec)}"
        )
    directory = _snapshot(spec, checkpoint, config.revision)
    _check_directory(spec, directory)
    return Source(directory, checkpoint, directory.name)  # snapshot folders are commit hashes


def load_weights(
    spec: WeightsSpec, config: ExpertConfig, load: Callable[[Path, torch.dtype], Model]
) -> tuple[Model, Source]:
    """The ``build()`` scaffold: ``load(directory, dtype)`` on the configured weights.

    Checks ``config.dtype`` against ``spec.dtypes`` and ``config.device`` (``ValueError``),
    resolves the weights (``resolve_weights``), runs the family's ``load`` and moves the
    model to the device. A failure inside ``load`` that is not already an
    ``ExpertLoadError`` becomes one naming the directory and how to provide the weights.
    """
    dtype = torch_dtype(config.dtype, spec.dtypes, spec.expert, spec.dtype_hint)
    device = check_device(config.device, spec.expert)
    source = resolve_weights(spec, config)
    try:
        model = load(source.directory, dtype)
    except ExpertLoadError:
        raise
    except Exception as error:  # the libraries' load errors vary (OSError, ValueError, ...)
        raise ExpertLoadError(
            f"{spec.expert} weights could not be loaded from directory"
            f" {str(source.directory)!r} ({type(error).__name__}: {error})."
            f" {how_to_provide(spec)}"
        ) from error
    return model.to(device), source


def import_extra(module: str, *, expert: str, extra: str, package: str) -> ModuleType:
    """``import module``, or ``MissingExtraError`` naming the ``package`` and the ``extra``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(expert, extra, package) from error


def from_pretrained_strict(
    model_class: Any, directory: Path, dtype: torch.dtype, spec: WeightsSpec
) -> Any:
    """transformers' ``from_pretrained`` on a local directory, refusing a partial load.

    transformers only warns and initialises randomly what a checkpoint lacks (or does not
    fit): any missing, unexpected or mismatched key raises ``ExpertLoadError`` instead.
    """
    model, info = model_class.from_pretrained(
        str(directory), dtype=dtype, local_files_only=True, output_loading_info=True
    )
    _refuse_partial_load(info, directory, spec)
    return model


def _refuse_partial_load(info: Mapping[str, Any], directory: Path, spec: WeightsSpec) -> None:
    """``ExpertLoadError`` listing (first 5 of each) what ``from_pretrained`` could not match."""
    listed = {
        key: sorted(map(str, value))[:5]
        for key in ("missing_keys", "unexpected_keys", "mismatched_keys")
        if (value := info.get(key))
    }
    problems: object = listed or info.get("error_msgs")
    if problems:
        raise ExpertLoadError(
            f"{spec.expert} checkpoint {str(directory)!r} does not match the architecture in"
            f" its config.json ({problems}); refusing to run with randomly initialised weights."
            f" Use a {spec.expert} checkpoint such as {spec.default_checkpoint}"
        )


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


def content_revision(files: Sequence[Path], *, with_names: bool = False) -> str:
    """The one content label: ``CONTENT_PREFIX`` + ``fingerprint(files)`` (16 hex digits)."""
    return CONTENT_PREFIX + fingerprint(files, with_names=with_names)


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
        raise ValueError(
            f"{expert} context must be a 2-D tensor, i.e. a (B, L) tensor, got {shape}"
        )
    if not context.is_floating_point():
        raise ValueError(f"{expert} context must be floating point (float32), got {context.dtype}")
    if context.shape[1] == 0:
        raise ValueError(f"{expert} context must have at least one column, got (B, 0)")
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise ValueError(
            f"{expert} horizon must be an int >= 1, got {horizon!r} (a positive int, not a bool)"
        )
    infinite = torch.isinf(context).any(dim=1)  # (B,)
    if infinite.any():
        rows = infinite.nonzero().flatten()[:10].tolist()
        raise ValueError(
            f"{expert} context rows {rows} contain +-inf; only NaN may mark missing values"
        )


def check_observed_rows(context: torch.Tensor, expert: str, where: str = "") -> None:
    """``ValueError`` naming the rows (first 10) of ``context`` ``(B, L)`` that are all NaN.

    ``where`` follows "no observed value", e.g. ``" in their last 512 steps"``.
    """
    empty_rows = torch.isnan(context).all(dim=1).nonzero().flatten()
    if empty_rows.numel():
        raise ValueError(
            f"{expert} context rows {empty_rows[:10].tolist()} have no observed value{where}"
            " (all NaN)"
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


@dataclass(frozen=True)
class TrainedCheckpoint:
    """A trained expert's checkpoint as read: its payload, its path, and the SHA-256 of
    exactly the bytes loaded (a model file records it, so the gate is only ever paired with
    the expert it was trained with)."""

    payload: dict[str, Any]
    path: Path
    sha256: str


def read_trained_checkpoint(config: ExpertConfig, name: str, version: int) -> TrainedCheckpoint:
    """The checkpoint a retrain saved for trained expert ``name``.

    Read once, hashed, then ``torch.load(weights_only=True)`` from those bytes (tensors and
    plain data only); refuses, as ``ExpertLoadError``, no checkpoint given, a missing or
    unreadable file, another expert's file and another ``version`` (with the advice to
    retrain). The caller checks the rest.
    """
    if config.checkpoint is None:
        raise ExpertLoadError(
            f"expert {name!r} is trained by the retrain; build it from its checkpoint "
            f"(ExpertConfig(checkpoint='<store>/experts/{name}-<fingerprint>.pt'))"
        )
    path = Path(config.checkpoint)
    if not path.is_file():
        raise ExpertLoadError(f"expert {name!r}: checkpoint {str(path)!r} does not exist")
    try:
        content = path.read_bytes()
        raw = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ExpertLoadError(f"expert {name!r}: cannot read {str(path)!r}: {error}") from error
    if not isinstance(raw, dict) or raw.get("name") != name:
        raise ExpertLoadError(f"expert {name!r}: {str(path)!r} is not a {name} checkpoint")
    if raw.get("version") != version:
        raise ExpertLoadError(
            f"expert {name!r}: {str(path)!r} is a version-{raw.get('version')} checkpoint; this "
            f"code reads version {version}: run a retrain to train it again"
        )
    return TrainedCheckpoint(raw, path, hashlib.sha256(content).hexdigest())


def write_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Save a trained expert's ``payload`` (tensors and plain data) at ``path``: written to a
    temporary file, then renamed into place, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path
