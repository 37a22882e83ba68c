#!/usr/bin/env bash
# Builds the wheel, installs it into a fresh virtual environment with only its declared dependencies, and checks
# there that: the metadata declares no CUDA dependency (only the cu12/cu13 extras bring cuSOLVER/cuBLAS), the
# native core loads and analyses a model, and the CUDA core is either ready or says cleanly why not.
#   scripts/wheel_smoke.sh              build + fresh venv + checks
#   scripts/wheel_smoke.sh --installed [PYTHON]  only the checks, against the tempbalance installed for PYTHON
#                                       (default `python`; cibuildwheel's test-command)
# TB_EXPECT_CUDA_BUILT=1: the wheel must contain a CUDA core (CI's release wheel, .ci/check_cuda.sh's CUDA wheel).
set -euo pipefail
cd "$(dirname "$0")/.."

check_installed() {
  # Run outside the source tree so the installed package is imported, not ./tempbalance.
  (cd / && "$1" - <<'PY'
import importlib.metadata as md
import os
import subprocess
import sys
import warnings

import torch

import tempbalance
from tempbalance import cuda_backend

requires = md.requires("tempbalance") or []
base = [r for r in requires if "extra ==" not in r]
assert not any("nvidia" in r.lower() or "cuda" in r.lower() for r in base), base
extras = {e: [r.split(";")[0].strip() for r in requires if f'extra == "{e}"' in r] for e in ("cu12", "cu13")}
assert extras["cu12"] and all(r.startswith(("nvidia-cusolver-cu12", "nvidia-cublas-cu12")) for r in extras["cu12"])
assert extras["cu13"] and all(r.startswith(("nvidia-cusolver", "nvidia-cublas")) and "-cu1" not in r
                              for r in extras["cu13"]), extras

# one version everywhere: the metadata the wheel was built with, the module, the command
version = md.version("tempbalance")
assert tempbalance.__version__ == version, (tempbalance.__version__, version)
command = os.path.join(os.path.dirname(sys.executable), "tempbalance")
printed = subprocess.run([command, "--version"], capture_output=True, text=True, check=True).stdout
assert printed == f"tempbalance {version}\n", printed

assert tempbalance.native_available(), tempbalance._native.unavailable_reason
model = torch.nn.Sequential(torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Linear(128, 256))
with warnings.catch_warnings():
    warnings.simplefilter("error")  # CPU weights: no CUDA warning, ever
    report = tempbalance.analyze(model, backend="native")
assert all(r.status == "ok" for r in report.rows), report

status = cuda_backend.cuda_status()  # never raises: ready, or one line saying why not
assert status.startswith(("CUDA core ready: ", "CUDA core unavailable: ")), status
if not torch.cuda.is_available():
    assert status.startswith("CUDA core unavailable: "), status
if os.environ.get("TB_EXPECT_CUDA_BUILT") == "1":
    assert "not built" not in status, status  # imported from the wheel; here it can only lack a device
print(f"wheel smoke test: tempbalance {version}, native core loaded;", len(report.rows), "layers analysed;", status)
print("  requires:", base, "extras:", extras)
PY
  )
}

if [ "${1:-}" = "--installed" ]; then
  check_installed "${2:-python}"
  exit 0
fi

dist=$(mktemp -d); env_dir=$(mktemp -d)
python -m pip wheel -q --no-deps -w "$dist" .
python -m venv "$env_dir"
"$env_dir/bin/python" -m pip install -q torch==2.13.0 "$dist"/tempbalance-*.whl
check_installed "$env_dir/bin/python"
rm -rf "$dist" "$env_dir"
