#!/usr/bin/env bash
# README command (b): set up the dev environment and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
# The UI test drives Debian's headless Chromium (tests/flows/test_server_e2e.py).
if ! command -v chromium >/dev/null 2>&1; then
  sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_if_needed apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -q chromium
fi
.venv/bin/python -m pytest -q "$@"
