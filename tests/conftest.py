"""Shared fixtures. Everything here is offline and local."""

from __future__ import annotations

import os
from pathlib import Path

# Set before anything imports huggingface_hub or prefect: tests never touch the network,
# and Prefect's ephemeral server is slow to start on these machines (design.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import pytest  # noqa: E402

from storage import Store  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A fresh store in a temporary folder."""
    return Store.open(tmp_path / "store")
