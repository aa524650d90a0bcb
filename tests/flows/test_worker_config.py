"""Worker-side settings and the retrain form's cross-field rules, without a server."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.deployments.steps.core import run_step
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools.validation import ValidationError, validate
from pydantic import ValidationError as ConfigError

from flows.jobs import retrain
from flows.pull import PROJECT_DIR_ENV, ProjectDirError
from pipeline.config import RetrainConfig

REPO = Path(__file__).resolve().parents[2]


def _pull_step() -> dict[str, Any]:
    (step,) = yaml.safe_load((REPO / "prefect.yaml").read_text())["pull"]
    return dict(step)


def test_pull_step_has_no_deploy_time_template() -> None:
    """prefect.yaml's pull step carries no ``{{ $VAR }}`` that `prefect deploy` would bake in."""
    assert "{{" not in str(_pull_step())


def test_pull_step_reads_the_workers_environment(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run through Prefect's own step runner, the step changes into the worker's setting."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PROJECT_DIR_ENV, str(REPO))
    output = asyncio.run(run_step(_pull_step()))
    assert output == {"directory": str(REPO.resolve())}
    assert Path(os.getcwd()) == REPO.resolve()


@pytest.mark.parametrize("value", [None, "", "/nonexistent/checkout"])
def test_missing_or_wrong_project_dir_names_the_setting(
    prefect_harness: None, value: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker without (or with a wrong) MOE_PROJECT_DIR fails with a message naming it."""
    monkeypatch.chdir(tmp_path)
    if value is None:
        monkeypatch.delenv(PROJECT_DIR_ENV, raising=False)
    else:
        monkeypatch.setenv(PROJECT_DIR_ENV, value)
    with pytest.raises(ProjectDirError, match=PROJECT_DIR_ENV):
        asyncio.run(run_step(_pull_step()))
    assert Path(os.getcwd()) == tmp_path  # nothing changed


@functools.cache
def _retrain_schema() -> dict[str, Any]:
    return parameter_schema(retrain).model_dump_for_openapi()


def _schema_accepts(config: dict[str, object], server_path: bool = False) -> bool:
    """Validate as the server does on run creation (``server_path`` also checks the schema)."""
    if not server_path:
        return not validate({"config": config}, _retrain_schema())
    try:
        validate({"config": config}, _retrain_schema(), raise_on_error=True)
    except ValidationError:
        return False
    return True


def _model_accepts(config: dict[str, object]) -> bool:
    try:
        RetrainConfig(**config)  # type: ignore[arg-type]
    except ConfigError:
        return False
    return True


def test_parameter_schema_refuses_repeated_experts() -> None:
    """The deployment's parameter schema (what the server checks) refuses a repeated expert."""
    repeated = {"experts": ["seasonal_naive", "autoets", "seasonal_naive"]}
    assert not _schema_accepts(repeated, server_path=True)
    assert _schema_accepts({"experts": ["seasonal_naive", "autoets"]}, server_path=True)


def test_parameter_schema_windows_rule_matches_the_model() -> None:
    """Schema and RetrainConfig agree on backtest_windows < max_windows_per_series."""
    grid = itertools.product([None, 1, 2, 5, 6, 7, 99, 100], [None, 2, 3, 6, 7, 100, 101])
    for backtest, limit in grid:
        config: dict[str, object] = {}
        if backtest is not None:
            config["backtest_windows"] = backtest
        if limit is not None:
            config["max_windows_per_series"] = limit
        assert _schema_accepts(config) == _model_accepts(config), config
