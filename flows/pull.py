"""The deployments' pull step: find the project checkout on the worker, at run time.

``prefect deploy`` resolves ``{{ $VAR }}`` templates in ``prefect.yaml`` from the deploying
shell, so a templated directory would carry that machine's path to every worker. This step
takes no arguments: it reads ``MOE_PROJECT_DIR`` from the environment of the process that
runs the flow (the worker's), checks it, and changes into it so that the file entrypoints
(``flows/jobs.py:...``) resolve there.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PROJECT_DIR_ENV", "ProjectDirError", "set_project_dir"]

PROJECT_DIR_ENV = "MOE_PROJECT_DIR"
_ENTRYPOINT_FILE = Path("flows") / "jobs.py"


class ProjectDirError(RuntimeError):
    """The worker's MOE_PROJECT_DIR is unset or does not point at a project checkout."""


def set_project_dir() -> dict[str, str]:
    """Change into the worker's ``MOE_PROJECT_DIR``; returns ``{"directory": path}``.

    Raises ``ProjectDirError`` naming the setting when it is unset, empty, or not a
    checkout (no ``flows/jobs.py`` under it).
    """
    value = os.environ.get(PROJECT_DIR_ENV, "").strip()
    if not value:
        raise ProjectDirError(
            f"{PROJECT_DIR_ENV} is not set on this worker: start the worker with "
            f"{PROJECT_DIR_ENV}=/path/to/moe-forecast checkout (the folder holding "
            f"{_ENTRYPOINT_FILE})"
        )
    directory = Path(value).expanduser().resolve()
    if not (directory / _ENTRYPOINT_FILE).is_file():
        raise ProjectDirError(
            f"{PROJECT_DIR_ENV}={value!r} on this worker is not a moe-forecast checkout: "
            f"{directory / _ENTRYPOINT_FILE} does not exist"
        )
    os.chdir(directory)
    return {"directory": str(directory)}
