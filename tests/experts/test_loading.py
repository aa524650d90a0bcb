"""The load scaffold shared by the foundation experts (moe/experts/_loading.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from moe.experts._loading import WeightsSpec, import_extra, load_weights, resolve_weights
from moe.experts.base import ExpertConfig, ExpertLoadError, MissingExtraError

SPEC = WeightsSpec(
    expert="Toy",
    env_var="MOE_TOY_CHECKPOINT",
    default_checkpoint="toy-org/toy-model",
    hub_patterns=("config.json", "*.safetensors"),
    required=("config.json", "*.safetensors"),
    layout="config.json and model.safetensors",
    content_files=lambda directory: sorted(directory.glob("*")),
)


def _checkpoint(directory: Path, weights: bytes = b"w") -> Path:
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(weights)
    return directory


def test_local_directory_is_labelled_by_its_content(tmp_path: Path) -> None:
    """Guards the cache key: same bytes give the same label, other bytes another one."""
    first = resolve_weights(SPEC, ExpertConfig(checkpoint=str(_checkpoint(tmp_path / "a"))))
    twin = resolve_weights(SPEC, ExpertConfig(checkpoint=str(_checkpoint(tmp_path / "b"))))
    other = resolve_weights(SPEC, ExpertConfig(checkpoint=str(_checkpoint(tmp_path / "c", b"x"))))
    assert first.revision == twin.revision != other.revision
    assert first.directory == tmp_path / "a" and first.identity.endswith("@" + first.revision)


def test_environment_variable_names_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the lookup order: config, then the expert's environment variable."""
    monkeypatch.setenv("MOE_TOY_CHECKPOINT", str(_checkpoint(tmp_path / "env")))
    assert resolve_weights(SPEC, ExpertConfig()).directory == tmp_path / "env"


def test_incomplete_directory_says_what_is_missing(tmp_path: Path) -> None:
    """Guards the error for a directory without weights: names the missing pattern."""
    directory = tmp_path / "partial"
    directory.mkdir()
    (directory / "config.json").write_text("{}")
    with pytest.raises(ExpertLoadError, match=r"lacks \['\*\.safetensors'\]"):
        resolve_weights(SPEC, ExpertConfig(checkpoint=str(directory)))


def test_missing_path_is_not_mistaken_for_a_hub_id(tmp_path: Path) -> None:
    """Guards path detection: a path that does not exist is an error, never a download."""
    with pytest.raises(ExpertLoadError, match="does not exist") as error:
        resolve_weights(SPEC, ExpertConfig(checkpoint=str(tmp_path / "nowhere")))
    assert "MOE_TOY_CHECKPOINT" in str(error.value)


def test_offline_hub_miss_says_where_it_looked_and_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the offline miss: names the id, revision, cache, and the three ways to fix it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    config = ExpertConfig(checkpoint="toy-org/absent", revision="v1")
    with pytest.raises(ExpertLoadError) as error:
        resolve_weights(SPEC, config)
    message = str(error.value)
    for part in (
        "Toy weights 'toy-org/absent'",
        "revision 'v1'",
        "HF_HUB_OFFLINE is set",
        "hf download toy-org/absent --revision v1",
        "MOE_TOY_CHECKPOINT",
    ):
        assert part in message


def test_legacy_prefix_names_the_old_label_of_the_same_content(tmp_path: Path) -> None:
    """Guards the one spelling (sha256:) and the alias an older spelling keeps for the cache."""
    spec = dataclasses.replace(SPEC, legacy_prefixes=("sha256-",))
    source = resolve_weights(spec, ExpertConfig(checkpoint=str(_checkpoint(tmp_path / "a"))))
    digits = source.revision.removeprefix("sha256:")
    assert source.revision.startswith("sha256:") and len(digits) == 16
    assert source.aliases == ("sha256-" + digits,)
    assert resolve_weights(SPEC, ExpertConfig(checkpoint=str(tmp_path / "a"))).aliases == ()


def test_load_scaffold_wraps_library_errors_and_keeps_its_own(tmp_path: Path) -> None:
    """Guards load_weights: a library error becomes ExpertLoadError naming the directory."""
    config = ExpertConfig(checkpoint=str(_checkpoint(tmp_path / "a")))

    def broken(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
        raise OSError("truncated file")

    with pytest.raises(ExpertLoadError, match="truncated file") as error:
        load_weights(SPEC, config, broken)
    assert str(tmp_path / "a") in str(error.value) and "MOE_TOY_CHECKPOINT" in str(error.value)
    own = ExpertLoadError("architecture mismatch")

    def refusing(directory: Path, dtype: torch.dtype) -> torch.nn.Module:
        raise own

    with pytest.raises(ExpertLoadError) as error:
        load_weights(SPEC, config, refusing)
    assert error.value is own
    model, source = load_weights(SPEC, config, lambda d, dtype: torch.nn.Linear(1, 1, dtype=dtype))
    assert source.directory == tmp_path / "a" and next(model.parameters()).device.type == "cpu"


def test_load_scaffold_checks_dtype_and_names_missing_extras() -> None:
    """Guards the configuration checks that run before any weights are looked for."""
    float_only = dataclasses.replace(SPEC, dtypes=("float32",), dtype_hint=" (no bf16 here)")
    with pytest.raises(ValueError, match=r"Toy dtype .* got 'bfloat16' \(no bf16 here\)"):
        load_weights(float_only, ExpertConfig(dtype="bfloat16"), lambda d, t: torch.nn.Linear(1, 1))
    with pytest.raises(MissingExtraError, match=r"'toylib'.*\.\[toy\]"):
        import_extra("moe_no_such_module_anywhere", expert="toy", extra="toy", package="toylib")
