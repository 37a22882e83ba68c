#!/usr/bin/env bash
# The CUDA core on a GPU, in one call (~8 min on an H200; no network needed):
#   1. builds the package with the CUDA core for the GPU it finds (CMAKE_CUDA_ARCHITECTURES=<cc>-real) into a
#      virtual environment over $PY's site-packages (torch, nvcc's cuSOLVER/cuBLAS headers from the nvidia wheels);
#      the CPU core's LAPACK, scipy-openblas32, comes from .whl/ in the working tree when $PY lacks it;
#   2. runs the CUDA tests against the real built module (tests/analysis/test_cuda_*.py, tests/training/test_fused_gpu.py, test_streams,
#      test_fit_rule);
#   3. runs scripts/gpu_check.py: the CUDA core against the CPU core and float64 (RoBERTa-base and LLaMA-7B-block
#      shapes, odd shapes, conv and complex stacks, fp32/fp64/bf16, a stack split across solver calls), failure
#      probes in subprocesses with a timeout (NaN, overflowing Gram, failing solve, out of memory), streams (side
#      stream, waits, lag=1 handoff, fused tensor lrs under the sync-debug mode) and timing against per-layer
#      svdvals and batched eigvalsh (CUDA events).
# Writes $OUT (default ./gpu_check_out): gpu_check.md, gpu_check.json, build.log, pytest.log. Exit 1 on a failure.
#
#   bash scripts/gpu_check.sh                  # on the GPU machine
#   bash scripts/gpu_check.sh --selftest-cpu   # anywhere: step 3's logic against the CPU stand-in (CI runs this)
# PY= a python with tempbalance's dependencies (default python3); for --selftest-cpu it must have tempbalance
# installed. The scipy-openblas32 wheel for an offline GPU machine (Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 -d .whl \
#     scipy-openblas32      # .whl/ is listed in .git/info/exclude: the GPU run must carry it
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
SELFTEST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --selftest-cpu) SELFTEST=1 ;;
    --out) OUT_DIR="$2"; shift ;;
    *) echo "usage: $0 [--selftest-cpu] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
say() { printf '[gpu_check.sh] %s\n' "$*"; }

if [ "$SELFTEST" = 1 ]; then
  # Run from outside the source tree so `import tempbalance` is the installed package (with its compiled core).
  cd "$OUT_DIR"
  "$PY" -c "import tempbalance._core" 2>/dev/null || { say "FAIL: $PY has no installed tempbalance (pip install .)"; exit 1; }
  exec "$PY" "$ROOT/scripts/gpu_check.py" --selftest-cpu --out "$OUT_DIR"
fi

start=$(date +%s)
WORK="$(mktemp -d /tmp/tb-gpu-check.XXXXXX)"
CC="$("$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print("%d%d" % torch.cuda.get_device_capability())')"
ARCH="${CMAKE_CUDA_ARCHITECTURES:-${CC}-real}"
say "GPU: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__, "CUDA", torch.version.cuda)'); building for $ARCH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/[gpu_check.sh] driver: /' || true

# 1. Build into a venv that sees $PY's packages (torch, numpy, pybind11, scikit-build-core, the nvidia wheels).
"$PY" -m venv --system-site-packages "$WORK/venv"
VPY="$WORK/venv/bin/python"
if ! "$VPY" -c "import scipy_openblas32" 2>/dev/null; then
  ls "$ROOT"/.whl/scipy_openblas32-*.whl >/dev/null 2>&1 \
    || { say "FAIL: scipy-openblas32 is missing and $ROOT/.whl has no wheel of it (see the header of $0)"; exit 1; }
  "$VPY" -m pip install -q --no-index --find-links "$ROOT/.whl" scipy-openblas32
fi
if ! "$VPY" -m pip install --no-index --no-build-isolation --no-deps -C cmake.define.TEMPBALANCE_CUDA=ON \
     -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -C build-dir="$WORK/build" "$ROOT" >"$OUT_DIR/build.log" 2>&1; then
  tail -40 "$OUT_DIR/build.log"; say "FAIL: build (see $OUT_DIR/build.log)"; exit 1
fi
say "built in $(( $(date +%s) - start )) s: $(cd "$WORK" && "$VPY" -c 'from tempbalance import cuda_backend; print(cuda_backend.cuda_status())')"

# 2. The CUDA tests against the real module (from $WORK: the installed package, not the source tree).
# (the core sits in tempbalance/_cuda<major>/, the variant of the nvcc that built it: ask the loader which it took)
SO="$(cd "$WORK" && "$VPY" -c 'from tempbalance import cuda_backend as c; m = c._import(); assert m is not None, c._reason; print(m.__file__)')"
status=0
(cd "$WORK" && TEMPBALANCE_CORE_CUDA="$SO" "$VPY" -m pytest -q -rs -p no:cacheprovider \
  "$ROOT/tests/analysis/test_cuda_build.py" "$ROOT/tests/analysis/test_cuda_backend.py" "$ROOT/tests/training/test_fused_gpu.py" \
  "$ROOT/tests/analysis/test_streams.py" "$ROOT/tests/analysis/test_fit_rule.py") >"$OUT_DIR/pytest.log" 2>&1 || status=1
tail -3 "$OUT_DIR/pytest.log" | sed 's/^/[gpu_check.sh] pytest: /'

# 3. The checks on the device.
(cd "$WORK" && "$VPY" "$ROOT/scripts/gpu_check.py" --out "$OUT_DIR") || status=1
say "done in $(( $(date +%s) - start )) s; results in $OUT_DIR (exit $status)"
exit $status
