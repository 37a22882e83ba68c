#!/usr/bin/env bash
# Installs the sdist into a fresh virtual environment the way pip does where no wheel fits - built from source, here
# the CPU core alone (nvcc hidden) - and runs scripts/wheel_smoke.sh's checks against that install.
#   scripts/sdist_smoke.sh SDIST [PYTHON]      (PYTHON: the interpreter for the venv, default python3)
# torch==2.13.0: pip must find its CPU build (a find-links directory, or the CPU index as PIP_EXTRA_INDEX_URL).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] && [ -f "$1" ] || { echo "usage: $0 SDIST [PYTHON]" >&2; exit 2; }
sdist="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
env_dir="$(mktemp -d /tmp/tb-sdist-venv.XXXXXX)"
trap 'rm -rf "$env_dir"' EXIT
"${2:-python3}" -m venv "$env_dir"
"$env_dir/bin/pip" install -q torch==2.13.0
bash "$ROOT/scripts/no_compilers.sh" --only-nvcc "$env_dir/bin/pip" install -q "$sdist"
bash "$ROOT/scripts/wheel_smoke.sh" --installed "$env_dir/bin/python"
