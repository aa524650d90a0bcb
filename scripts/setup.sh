#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 and the project with the given extras, at
# the exact versions of requirements/lock.txt (the set the tests passed with), whatever has
# been released since. Refresh the lock with scripts/lock.sh; see what the newest allowed
# versions would do with scripts/check-latest.sh.
# Usage: scripts/setup.sh [EXTRAS]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet "pip==26.3"
# One resolver pass. torch==2.13.0 is the local CPU build on these machines (a plain `torch`
# would pull several GB of CUDA packages); every other version comes from the lock.
.venv/bin/python -m pip install --quiet --constraint requirements/lock.txt \
  "torch==2.13.0" -e ".[${extras}]"
.venv/bin/python -m pip check
