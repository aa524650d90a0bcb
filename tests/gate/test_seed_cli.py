"""The seed's command line, run exactly as written, on offline experts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe.artifact import load_artifact
from moe.seed.cli import run

REPO = Path(__file__).resolve().parents[2]


def _write_dados(path: Path) -> None:
    with open(path, "w") as handle:
        for index in range(6):
            length = 9 + 2 * index
            sequence = [
                round(10 + index + 3 * math.sin(step / 2 + index), 3) for step in range(length)
            ]
            handle.write(json.dumps({"sequence": sequence}) + "\n")


def _offline_env(home: Path) -> dict[str, str]:
    """No network, an empty hub cache and no checkpoint overrides: foundation weights are absent."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MOE_")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HOME": str(home / "hf")})
    return env


@pytest.fixture(scope="module")
def seed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The seed's train command, verbatim, in a folder holding dados.jsonl."""
    folder = tmp_path_factory.mktemp("seed_cli")
    _write_dados(folder / "dados.jsonl")
    command = (
        "--mode train --jsonl dados.jsonl --input-length 4 --pred-length 2 "
        "--save-path ./moe_model.pt --device cpu"
    ).split()
    completed = subprocess.run(
        [sys.executable, str(REPO / "main.py"), *command],
        cwd=folder,
        env=_offline_env(folder),
        capture_output=True,
        text=True,
        timeout=600,
    )
    return folder, completed


def test_seed_train_command_works_as_written(
    seed_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Guards the seed's train line: it trains on offline experts when foundation weights lack."""
    folder, completed = seed_run
    assert completed.returncode == 0, completed.stderr
    assert (folder / "moe_model.pt").is_file()
    assert "using offline experts seasonal_naive, autotheta, fracast, stat_ensemble" in (
        completed.stderr
    )
    assert completed.stdout.startswith(
        "saved ./moe_model.pt: experts seasonal_naive,autotheta,fracast,stat_ensemble"
    )


def test_seed_predict_command_prints_the_forecast(
    seed_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    """Guards the seed's predict line: it prints a (1, pred_length) forecast."""
    folder, _ = seed_run
    completed = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "--mode",
            "predict",
            "--save-path",
            "./moe_model.pt",
            "--series",
            "[10.0, 11.5, 12.0, 11.0, 10.5, 12.5]",
        ],
        cwd=folder,
        env=_offline_env(folder),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr
    forecast = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(forecast) == 1 and len(forecast[0]) == 2
    assert all(math.isfinite(value) and 5 < value < 20 for value in forecast[0])


def test_explicit_experts_and_verbose_prediction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards --experts a,b, --windowing and --verbose: the chosen experts and the windowing
    are stored, and the experts are explained."""
    _write_dados(tmp_path / "dados.jsonl")
    model = str(tmp_path / "m.pt")
    status = run(
        [
            "--mode",
            "train",
            "--jsonl",
            str(tmp_path / "dados.jsonl"),
            "--input-length",
            "4",
            "--pred-length",
            "2",
            "--save-path",
            model,
            "--experts",
            "seasonal_naive,autotheta",
            "--epochs",
            "2",
            "--windowing",
            "seed",
        ]
    )
    assert status == 0
    assert "experts seasonal_naive,autotheta" in capsys.readouterr().out
    assert load_artifact(model).train_config["windows"]["windowing"] == "seed"
    assert (
        run(["--mode", "predict", "--save-path", model, "--series", "[1, 2, 3, 4, 5]", "--verbose"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert (
        lines[0].startswith("row 0: ")
        and "seasonal_naive=" in lines[0]
        and "autotheta=" in lines[0]
    )
    assert len(json.loads(lines[-1])[0]) == 2


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Guards CLI errors: bad expert, short series, wrong length, missing flags and bad
    trained-expert settings are named."""
    _write_dados(tmp_path / "dados.jsonl")
    model = str(tmp_path / "m.pt")
    base = [
        "--mode",
        "train",
        "--jsonl",
        str(tmp_path / "dados.jsonl"),
        "--input-length",
        "4",
        "--pred-length",
        "2",
        "--save-path",
        model,
    ]
    assert run([*base, "--experts", "seasonal_naive,nope"]) == 1
    assert "unknown expert 'nope'" in capsys.readouterr().err
    assert run([*base, "--experts", "seasonal_naive,autotheta", "--epochs", "1"]) == 0
    assert run(["--mode", "predict", "--save-path", model, "--series", "[1, 2]"]) == 1
    assert "series has 2 points" in capsys.readouterr().err
    assert (
        run(
            [
                "--mode",
                "predict",
                "--save-path",
                model,
                "--series",
                "[1, 2, 3, 4, 5]",
                "--input-length",
                "5",
            ]
        )
        == 1
    )
    assert "trained with input_length=4, got input_length=5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run(["--mode", "train", "--input-length", "4", "--pred-length", "2"])
    assert exit_info.value.code == 2 and "--mode train needs --jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run([*base, "--min-context", "5"])
    assert exit_info.value.code == 2
    assert "--min-context must be between 1 and --input-length (4), got 5" in (
        capsys.readouterr().err
    )
    trees = [*base, "--experts", "seasonal_naive,global_trees", "--global-expert"]
    assert run([*trees, '{"tree_round": 5}']) == 1  # misspelt: refused, not ignored
    assert "tree_round" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run([*trees, "tree_rounds=5"])
    assert exit_info.value.code == 2
    assert "--global-expert is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run([*trees, "[5]"])
    assert "--global-expert must be a JSON object" in capsys.readouterr().err


def test_min_context_flag_trains_and_predicts_short_series(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Guards --min-context: an input length above every series still trains (padded
    windows), and a series shorter than --input-length is forecast."""
    _write_dados(tmp_path / "dados.jsonl")  # 9..19 points
    model = str(tmp_path / "m.pt")
    train = (
        f"--mode train --jsonl {tmp_path / 'dados.jsonl'} --input-length 24 --pred-length 2 "
        f"--save-path {model} --experts seasonal_naive,autotheta"
    ).split()
    assert run([*train, "--epochs", "1", "--min-context", "6"]) == 0, capsys.readouterr().err
    assert load_artifact(model).train_config["windows"]["min_context"] == 6
    capsys.readouterr()
    assert run(["--mode", "predict", "--save-path", model, "--series", "[1, 2, 3, 4, 5, 6]"]) == 0
    forecast = json.loads(capsys.readouterr().out)
    assert len(forecast) == 1 and len(forecast[0]) == 2
    assert run(["--mode", "predict", "--save-path", model, "--series", "[1, 2, 3, 4, 5]"]) == 1
    assert "at least min_context=6" in capsys.readouterr().err


def test_import_moe_stays_light() -> None:
    """Guards the lazy package: `import moe` loads no torch; its exports resolve on first use."""
    code = (
        "import sys, moe\n"
        "assert 'torch' not in sys.modules, 'torch imported eagerly'\n"
        "assert callable(moe.train_and_save) and callable(moe.predict_from_model)\n"
        "assert moe.MoERouter.__name__ == 'MoERouter' and callable(moe.load_jsonl)\n"
        "assert hasattr(moe, 'TimeSeriesDataset') and 'MoERouter' in dir(moe)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
