"""The seed command line and ``moe retrain`` fit the same gate on the same real series.

Both run the validated selection (``moe.selection.fit_gate``) with real offline experts on
M3 monthly series from the bundled sample. The seed path sees each series without its
last ``H`` points, so its windows are exactly the retrain's training windows (and its
validation windows the retrain's newest training windows); both gates are then scored on
the retrain's backtest windows, which neither trained on. At ``input_length`` 72 the two
older windows of each 90-point series have 54 and 36 points of context: both entry points
keep them by default (``min_context`` 36), NaN-padded on the left.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from moe.artifact import GateArtifact, load_artifact
from moe.experts.base import ExpertConfig
from moe.experts.registry import build_expert
from moe.metrics import mase
from moe.model_file import load_router
from moe.seed.cli import run
from pipeline.config import RetrainConfig
from pipeline.retrain import retrain
from pipeline.training_data import build_experts_for, load_training_data, prepare_windows
from storage import Store

SAMPLE = Path(__file__).resolve().parents[2] / "pipeline" / "sample_data"
EXPERTS = ["seasonal_naive", "autoets", "autotheta"]
H = 18
KEEP = 36 + 3 * H  # the last 90 points: 1 backtest + 2 training windows per series


def _sample() -> list[dict[str, object]]:
    """Sample series with at least ``KEEP`` points, cut to their last ``KEEP``."""
    with gzip.open(SAMPLE / "m3_monthly_sample.jsonl.gz", "rt") as handle:
        records = [json.loads(line) for line in handle]
    return [{**r, "sequence": r["sequence"][-KEEP:]} for r in records if len(r["sequence"]) >= KEEP]


def _write(path: Path, records: list[dict[str, object]]) -> Path:
    with open(path, "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def _records(with_freq: bool) -> list[dict[str, object]]:
    records = _sample()
    if not with_freq:
        records = [{k: v for k, v in r.items() if k not in ("freq", "start")} for r in records]
    return records


@pytest.fixture(
    scope="module",
    params=[(True, 36), (False, 36), (True, 72)],
    ids=["with_freq", "without_freq", "with_freq_L72"],
)
def retrained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[bool, Store, RetrainConfig, float]:
    """``moe retrain`` on the sample (with or without freq; seasons per series, as the
    default; input_length 36 or 72 with the default min_context): whether freq was kept,
    its store, config and backtest MASE."""
    with_freq, input_length = request.param
    folder = tmp_path_factory.mktemp("seed_vs_retrain")
    store = Store.open(folder / "store")
    config = RetrainConfig(
        jsonl_paths=[str(_write(folder / "full.jsonl", _records(with_freq)))],
        experts=EXPERTS,  # type: ignore[arg-type]
        input_length=input_length,
        pred_length=H,
        max_windows_per_series=64,  # the seed path's default cap, so the windows agree
        forecast_after=False,
    )
    result = retrain(store, config)
    return with_freq, store, config, result.scores.overall()["mixture"]["mase"]


def test_seed_command_line_is_not_worse_than_retrain(
    retrained: tuple[bool, Store, RetrainConfig, float],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Guards issue 12/13: the seed CLI (with or without freq) fits a gate at least as good
    as moe retrain's on the same series, scored on the retrain's backtest windows."""
    with_freq, store, config, retrain_mase = retrained
    records = _records(with_freq)
    truncated = [{**r, "sequence": r["sequence"][:-H]} for r in records]  # type: ignore[index]
    seed_file = _write(tmp_path / "seed.jsonl", truncated)
    model = tmp_path / "seed.pt"
    argv = ["--mode", "train", "--jsonl", str(seed_file)]
    argv += ["--input-length", str(config.input_length)]
    argv += ["--pred-length", str(H), "--save-path", str(model), "--experts", ",".join(EXPERTS)]
    assert run(argv) == 0, capsys.readouterr().err

    # The retrain detects each series' season on the series without its backtest targets,
    # which is exactly the seed path's (truncated) file: the same periods, the same cached
    # expert forecasts, so only the two gates differ.
    series, windows = prepare_windows(store, config)
    experts = build_experts_for(config)
    data = load_training_data(store, experts, series, windows, H)
    holdout = windows.is_holdout
    router = load_router(model, experts=experts)
    output = router.route_cached(
        torch.from_numpy(windows.context[holdout]), data.points[holdout].contiguous()
    )
    context = windows.context[holdout]
    seasons = data.season_lengths.numpy()[holdout]
    seed_mase = float(
        np.nanmean(mase(windows.target[holdout], output.point.numpy(), context, seasons))
    )
    print(
        f"seed CLI MASE {seed_mase:.4f} vs moe retrain {retrain_mase:.4f} "
        f"(with_freq={with_freq}, input_length={config.input_length})"
    )
    assert int(holdout.sum()) == len(records) > 20
    # every series has its three windows (none dropped for a short context)
    assert len(windows) == 3 * len(records)
    assert seed_mase <= retrain_mase * 1.01, (seed_mase, retrain_mase)


def test_seed_command_line_trains_the_retrains_global_trees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards issue 13's parity for trained experts: on the same points (the seed file is
    each series without its backtest targets) the seed CLI trains exactly the retrain's
    ``global_trees`` (same fingerprint), saves it beside the model file, and its gate is not
    worse on the retrain's backtest windows."""
    experts = ["seasonal_naive", "autotheta", "global_trees"]
    records = _records(with_freq=True)
    store = Store.open(tmp_path / "store")
    config = RetrainConfig(
        jsonl_paths=[str(_write(tmp_path / "full.jsonl", records))],
        experts=experts,  # type: ignore[arg-type]
        input_length=36,
        pred_length=H,
        max_windows_per_series=64,
        global_expert={"tree_rounds": 10},  # type: ignore[arg-type]
        forecast_after=False,
    )
    result = retrain(store, config)
    retrain_mase = result.scores.overall()["mixture"]["mase"]
    retrained = load_artifact(result.artifact_path)

    truncated = [{**r, "sequence": r["sequence"][:-H]} for r in records]  # type: ignore[index]
    model = tmp_path / "seed" / "seed.pt"
    argv = ["--mode", "train", "--jsonl", str(_write(tmp_path / "seed.jsonl", truncated))]
    argv += ["--input-length", "36", "--pred-length", str(H), "--save-path", str(model)]
    argv += ["--experts", ",".join(experts), "--global-expert", '{"tree_rounds": 10}']
    assert run(argv) == 0, capsys.readouterr().err
    seeded = load_artifact(model)

    def trees_entry(artifact: GateArtifact) -> dict[str, Any]:
        return artifact.experts[artifact.expert_keys.index("global_trees")]

    seed_trees, retrain_trees = trees_entry(seeded), trees_entry(retrained)
    assert seed_trees["cache_key"] == retrain_trees["cache_key"]  # the same trees
    checkpoint = Path(seed_trees["config"]["checkpoint"])
    assert checkpoint.parent == model.parent / "experts" and checkpoint.is_file()

    # Score the seed's gate on the retrain's backtest windows, every expert (the trees from
    # the retrain's checkpoint) read from the retrain's cache.
    series, windows = prepare_windows(store, config)
    pool = [
        build_expert("global_trees", ExpertConfig(checkpoint=retrain_trees["config"]["checkpoint"]))
        if name == "global_trees"
        else expert
        for name, expert in zip(experts, [*build_experts_for(config), None], strict=True)
    ]
    data = load_training_data(store, pool, series, windows, H)
    holdout = windows.is_holdout
    router = load_router(model)  # rebuilt from the seed's model file and checkpoint
    output = router.route_cached(
        torch.from_numpy(windows.context[holdout]), data.points[holdout].contiguous()
    )
    seasons = data.season_lengths.numpy()[holdout]
    seed_mase = float(
        np.nanmean(
            mase(windows.target[holdout], output.point.numpy(), windows.context[holdout], seasons)
        )
    )
    print(f"with global_trees: seed CLI MASE {seed_mase:.4f} vs moe retrain {retrain_mase:.4f}")
    assert seed_mase <= retrain_mase * 1.01, (seed_mase, retrain_mase)
