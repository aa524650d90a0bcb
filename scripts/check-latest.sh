#!/usr/bin/env bash
# The latest-dependencies check: build a throwaway environment from the newest versions
# pyproject.toml allows (no lock), say which differ from requirements/lock.txt, and run the
# whole suite in it, so a breaking upstream release is seen here before a user meets it.
# Usage: bash scripts/check-latest.sh [pytest args]
# torch stays at 2.13.0 (the CPU build on these machines; a newer one is a multi-GB CUDA
# download): it is the platform, not a range this check can explore here.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet --upgrade --upgrade-strategy eager "torch==2.13.0" -e ".[dev]"
"$py" -m pip check
"$py" -m pip list --format=freeze --exclude-editable > "$scratch/latest.txt"
"$py" - requirements/lock.txt "$scratch/latest.txt" <<'PY'
import re, sys
def pins(path):
    found = {}
    for line in open(path):
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found
locked, latest = pins(sys.argv[1]), pins(sys.argv[2])
changed = sorted(n for n in locked if n in latest and latest[n] != locked[n])
print(f"newest allowed vs lock: {len(changed)} of {len(locked)} locked packages differ")
for name in changed:
    print(f"  {name:32} {locked[name]:>14} -> {latest[name]}")
PY
bash scripts/chromium.sh
"$py" -m pytest -q -p no:cacheprovider "$@"
