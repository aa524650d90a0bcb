#!/usr/bin/env bash
# Create .venv with the CPU build of torch 2.13.0 and the project with the given extras.
# Usage: scripts/setup.sh [EXTRAS]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# One resolver pass: torch==2.13.0 is the local CPU build; the pins avoid the known traps.
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[${extras}]"
.venv/bin/python -m pip check
