#!/usr/bin/env bash
# README command (b): set up the dev environment (from the lock) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
bash scripts/chromium.sh
.venv/bin/python -m pytest -q "$@"
