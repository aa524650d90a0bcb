#!/usr/bin/env bash
# Refresh requirements/lock.txt, the exact versions every install uses (scripts/setup.sh).
# Usage: bash scripts/lock.sh            (newest versions pyproject.toml allows)
#        bash scripts/lock.sh -P NAME    (upgrade one package, keep the rest; pip-compile's flag)
# The lock is computed by pip-tools (pip's own resolver) for Python 3.11 on linux x86_64 and
# covers the `dev` extra, a superset of every extra set setup.sh installs. Afterwards run
# `bash scripts/test.sh` and commit the lock only when the suite passes.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/python" -m pip install --quiet "pip==26.3" "pip-tools==7.6.2"
upgrade=(--upgrade)
[ $# -gt 0 ] && upgrade=("$@")
# --strip-extras: the lock is used as a pip constraints file, which takes no extras.
# --unsafe-package moe-forecast: the extras name the project itself (offline = [stats,
#   fracast], ...); the project is installed from the checkout, never pinned to a path.
# --unsafe-package torch: torch is installed by name (requirements/torch.txt says why); this
#   also makes pip and setuptools ordinary packages, so setuptools is pinned too.
"$tools/venv/bin/pip-compile" --quiet "${upgrade[@]}" --extra dev --strip-extras \
  --unsafe-package torch --unsafe-package moe-forecast --no-emit-index-url --no-emit-find-links \
  --constraint requirements/torch.txt --output-file requirements/lock.txt pyproject.toml
echo "wrote requirements/lock.txt ($(grep -c '==' requirements/lock.txt) pins)"
