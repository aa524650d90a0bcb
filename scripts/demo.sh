#!/usr/bin/env bash
# README command (a): set up and run the main job on the embedded default
# (bundled real sample, local store in ./moe_store, local Prefect).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
.venv/bin/moe demo "$@"
