"""User errors in the ``moe`` CLI: one line naming the problem, exit 2, no traceback."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from cli.commands import main
from storage import Store, ingest_jsonl
from storage.registry import promote, register_model
from tests.pipeline.test_artifact_at_use import KEYS, _artifact


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(
            json.dumps({"series_id": f"s{i}", "sequence": list(range(1, 20))}) + "\n"
            for i in range(3)
        )
    )
    return path


def test_store_pointing_at_a_file(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--store naming a file is one line for readers and writers alike."""
    a_file = tmp_path / "f"
    a_file.write_text("x")
    for argv in (["sql", "SELECT 1"], ["ingest", str(data)], ["models", "list"]):
        code, _, err = _run(["--store", str(a_file), *argv], capsys)
        _assert_one_line(code, err, "is a file")


@pytest.mark.parametrize(
    "argv",
    [
        ["sql", "SELECT 1"],
        ["models", "list"],
        ["models", "rollback"],
        ["store", "catalog"],
        ["forecast"],
        ["evaluate"],
    ],
)
def test_read_commands_do_not_create_a_store(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --store says 'no store' and creates nothing."""
    missing = tmp_path / "typo"
    code, _, err = _run(["--store", str(missing), *argv], capsys)
    _assert_one_line(code, err, "no store at", "--store")
    assert not missing.exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["ingest", "--chunk-lines", "0", "x.jsonl"], "--chunk-lines"),
        (["ingest", "--chunk-lines", "ten", "x.jsonl"], "whole number"),
        (["retrain", "--config", "{bad"], "Invalid JSON"),
        (["retrain", "--config", '{"experts": ["nope", "autoets"]}'], "experts.0"),
        (["retrain", "--config", '{"input_length": -3}'], "input_length"),
        (["retrain", "--config", '{"unknown_field": 1}'], "unknown_field"),
        (["retrain", "--jsonl", "/no/such/file.jsonl"], "no such file"),
        (["sql", "SELECT $1", "--param", "abc"], "not JSON"),
        (["sql", "SELECT * FROM nope"], "unknown table"),
        (["sql", "SELECT nope FROM series"], "nope"),
        (["sql", "DROP VIEW series"], "only SELECT"),
        (["sql", "SELECT 1", "--max-rows", "-1"], "--max-rows"),
        (["models", "promote"], "which version"),
        (["models", "promote", "v1"], "unknown model version"),
        (["models", "rollback"], "no earlier champion"),
        (["forecast"], "no champion"),
        (["forecast", "--run-id", "_empty"], "run_id"),
        (["forecast", "--run-id", "../x"], "run_id"),
        (["forecast", "--model-version", "nope"], "unknown model version"),
        (["ingest", "/no/such/file.jsonl"], "no such file"),
        (["nosuchcommand"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line(
    tmp_path: Path,
    data: Path,
    argv: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad flags, configs, SQL, versions and run ids: exit 2 and one line, no traceback."""
    store = tmp_path / "s"
    assert main(["--store", str(store), "ingest", str(data)]) == 0
    capsys.readouterr()
    code, _, err = _run(["--store", str(store), *argv], capsys)
    _assert_one_line(code, err, needle)


def test_forecast_unknown_series_is_one_line(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a champion, an unknown --series is named in one line before Prefect starts."""
    store = Store.open(tmp_path / "s")
    ingest_jsonl(store, data)
    from moe.artifact import save_artifact

    path = save_artifact(_artifact(), tmp_path / "m.pt")
    version = register_model(
        store,
        path,
        gate_kind="linear",
        expert_keys=KEYS,
        input_length=8,
        pred_length=3,
        train_windows=1,
        backtest_mase=1.0,
        metrics={},
    )
    promote(store, version, "test")
    code, _, err = _run(["--store", str(store.root), "forecast", "--series", "zz"], capsys)
    _assert_one_line(code, err, "not in the store", "zz")


def test_debug_prints_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--debug adds the traceback above the one-line message."""
    code, _, err = _run(["--store", str(tmp_path / "none"), "--debug", "sql", "SELECT 1"], capsys)
    assert (
        code == 2
        and "Traceback" in err
        and err.strip().endswith("or create one with `moe ingest FILE`")
    )


def test_stdin_is_ingested(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`moe ingest -` reads piped standard input (not 'empty file')."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.read_bytes())))
    code, out, err = _run(["--store", str(tmp_path / "s"), "ingest", "-"], capsys)
    assert code == 0, err
    assert "<stdin>: 3 lines read = 0 blank + 3 accepted" in out
