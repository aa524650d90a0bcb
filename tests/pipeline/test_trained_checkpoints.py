"""Trained experts' checkpoints travel with their model and are checked before use.

A model with a trained expert (``global_trees``) names its checkpoint and records the
SHA-256 of its bytes. A store moved as a whole, or a seed model folder moved with its
``experts/``, keeps forecasting the same numbers; a checkpoint whose bytes changed after the
gate was trained is refused by name, even when it is a valid checkpoint of that expert.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.commands import main
from moe.artifact import GateArtifact, load_artifact
from moe.model_file import MissingExpertError, load_router
from moe.seed.api import predict_from_model
from moe.seed.cli import run
from pipeline.config import ForecastConfig, RetrainConfig
from pipeline.forecast import batch_forecast
from pipeline.models import _checkpoint_names, check_registered_checkpoints, load_verified_artifact
from pipeline.retrain import retrain
from storage import Store
from storage.registry import champion
from storage.sql import query

EXPERTS = ["seasonal_naive", "global_trees"]
H = 6


def _write_series(path: Path, n_series: int = 16, length: int = 60) -> Path:
    """Seasonal series with trend and noise, one JSON record per line."""
    rng = np.random.default_rng(3)
    steps = np.arange(length)
    with open(path, "w") as handle:
        for i in range(n_series):
            values = 20 + 0.1 * i * steps + 3 * np.sin(2 * np.pi * steps / 12) + rng.random(length)
            record = {"series_id": f"s{i:02d}", "sequence": values.round(3).tolist(), "freq": "MS"}
            handle.write(json.dumps(record) + "\n")
    return path


def _config(jsonl: Path) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "jsonl_paths": [str(jsonl)],
            "experts": EXPERTS,
            "input_length": 24,
            "pred_length": H,
            "max_windows_per_series": 4,
            "global_expert": {"tree_rounds": 5},
            "forecast_after": False,
        }
    )


def _trees_entry(artifact: GateArtifact) -> dict[str, object]:
    return artifact.experts[artifact.expert_keys.index("global_trees")]


def _points(store: Store, run_id: str) -> list[tuple[str, int, float]]:
    rows = query(
        store,
        "SELECT series_id, step, point FROM forecasts WHERE run_id = $1 ORDER BY 1, 2",
        [run_id],
    )
    return list(zip(*rows.to_pydict().values(), strict=True))


def _tamper(checkpoint: Path) -> None:
    """Rewrite ``checkpoint`` as another valid checkpoint of the same trees (an extra key):
    it still builds, so only the recorded SHA-256 can tell."""
    payload = torch.load(checkpoint, weights_only=True)
    torch.save({**payload, "note": "edited"}, checkpoint)


@pytest.fixture(scope="module")
def trained_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store retrained with ``global_trees`` and one forecast run: its folder, the run id."""
    folder = tmp_path_factory.mktemp("trained")
    store = Store.open(folder / "store")
    result = retrain(store, _config(_write_series(folder / "series.jsonl")))
    assert result.promoted, result.reason
    entry = _trees_entry(load_artifact(result.artifact_path))
    checkpoint = Path(str(entry["config"]["checkpoint"]))  # type: ignore[index]
    assert checkpoint.parent == folder / "store" / "experts"
    assert entry["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    return folder / "store", batch_forecast(store, ForecastConfig()).run_id


def test_a_store_moved_as_a_whole_forecasts_the_same(
    trained_store: tuple[Path, str], tmp_path: Path
) -> None:
    """Guards the moved store: the model file names the checkpoint where it was trained;
    the forecast finds it in the store's own ``experts/`` and forecasts the same numbers."""
    original, first_run = trained_store
    moved = tmp_path / "elsewhere" / "store"
    shutil.copytree(original, moved)
    shutil.rmtree(moved / "tables" / "forecasts")  # only the new run's rows below
    hidden = original.with_name("hidden")
    original.rename(hidden)  # the recorded path no longer exists
    try:
        store = Store.open(moved)
        run_id = batch_forecast(store, ForecastConfig()).run_id
        forecasts = _points(store, run_id)
    finally:
        hidden.rename(original)
    assert len(forecasts) == 16 * H
    assert forecasts == _points(Store.open(original), first_run)


def test_a_changed_checkpoint_is_refused(trained_store: tuple[Path, str], tmp_path: Path) -> None:
    """Guards the recorded SHA-256: a checkpoint rewritten after training (still a valid
    checkpoint of the same trees) stops the forecast with a message naming the expert, the
    file and both digests."""
    original, _ = trained_store
    copy = tmp_path / "store"
    shutil.copytree(original, copy)
    (checkpoint,) = (copy / "experts").glob("global_trees-*.pt")
    _tamper(checkpoint)
    with pytest.raises(MissingExpertError, match="changed after the gate was trained") as caught:
        batch_forecast(Store.open(copy), ForecastConfig())
    assert "'global_trees'" in str(caught.value) and checkpoint.name in str(caught.value)


def test_a_missing_checkpoint_names_where_it_looked(
    trained_store: tuple[Path, str], tmp_path: Path
) -> None:
    """Guards the message for a store copied without ``experts/`` and the old place gone."""
    original, _ = trained_store
    copy = tmp_path / "store"
    shutil.copytree(original, copy, ignore=shutil.ignore_patterns("experts"))
    hidden = original.with_name("hidden")
    original.rename(hidden)
    try:
        with pytest.raises(MissingExpertError, match="copy the store's experts/ folder") as caught:
            batch_forecast(Store.open(copy), ForecastConfig())
    finally:
        hidden.rename(original)
    assert str(copy / "experts") in str(caught.value)


def test_a_seed_model_folder_moved_with_its_experts_predicts_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards the seed layout: ``model.pt`` with ``experts/`` beside it, moved together."""
    jsonl = _write_series(tmp_path / "series.jsonl")
    model = tmp_path / "run" / "model.pt"
    argv = ["--mode", "train", "--jsonl", str(jsonl), "--save-path", str(model)]
    argv += ["--input-length", "24", "--pred-length", str(H), "--experts", ",".join(EXPERTS)]
    argv += ["--global-expert", '{"tree_rounds": 5}']
    assert run(argv) == 0, capsys.readouterr().err
    series = json.loads(jsonl.read_text().splitlines()[0])["sequence"]
    before = predict_from_model(model, series, 24)
    moved = tmp_path / "moved"
    (tmp_path / "run").rename(moved)
    after = predict_from_model(moved / "model.pt", series, 24)
    assert torch.equal(before, after)
    load_router(moved / "model.pt")  # a model file alone finds experts/ beside it too
    _tamper(next((moved / "experts").glob("global_trees-*.pt")))
    with pytest.raises(MissingExpertError, match="changed after the gate was trained"):
        predict_from_model(moved / "model.pt", series, 24)


def _champion_artifact(store: Store) -> GateArtifact:
    model = champion(store)
    assert model is not None
    return load_verified_artifact(store, model)


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_moe_forecast_checks_checkpoints_before_prefect_starts(
    trained_store: tuple[Path, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    """Guards ``moe forecast``'s pre-check: a missing or changed checkpoint is one line,
    exit 2, and no forecast run starts; an intact store passes the same check."""
    original, _ = trained_store
    copy = tmp_path / "store"
    shutil.copytree(original, copy)
    (checkpoint,) = (copy / "experts").glob("global_trees-*.pt")
    store = Store.open(copy)
    assert check_registered_checkpoints(store, _champion_artifact(store)) is None
    runs_before = query(store, "SELECT count(DISTINCT run_id) FROM forecasts").column(0)[0]
    hidden = original.with_name("hidden")
    if damage == "missing":
        checkpoint.unlink()
        original.rename(hidden)  # nor at the recorded path
    else:
        _tamper(checkpoint)
    try:
        code = main(["--store", str(copy), "forecast"])
    finally:
        if hidden.exists():
            hidden.rename(original)
    err = capsys.readouterr().err
    needle = "copy the store's experts/ folder" if damage == "missing" else "changed after the gate"
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert needle in err and checkpoint.name in err and "Traceback" not in err
    runs_after = query(store, "SELECT count(DISTINCT run_id) FROM forecasts").column(0)[0]
    assert runs_after == runs_before


@pytest.mark.parametrize("recorded", ["/x/../..", "/x/evil.sh", "../.pt", "C:\\x\\..\\.."])
def test_a_checkpoint_name_that_is_not_a_file_name_is_refused(recorded: str) -> None:
    """Guards the lookup by file name in a store's folder: nothing but ``<name>.pt``."""
    artifact = GateArtifact(
        gating_state={"linear.weight": torch.zeros(2, 4)},
        expert_keys=EXPERTS,
        input_length=4,
        pred_length=2,
        gate={"kind": "linear"},
        experts=[
            {"name": "seasonal_naive", "cache_key": None, "config": {}},
            {"name": "global_trees", "cache_key": None, "config": {"checkpoint": recorded}},
        ],
    )
    with pytest.raises(Exception, match="not a checkpoint file name"):
        _checkpoint_names(artifact)
