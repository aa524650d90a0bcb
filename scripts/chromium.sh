#!/usr/bin/env bash
# Debian's headless Chromium, for the UI test (tests/flows/test_server_e2e.py).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
  sudo_if_needed=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo_if_needed apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo_if_needed apt-get install -y -q chromium
fi
