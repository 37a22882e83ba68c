#!/usr/bin/env bash
# Builds the CUDA variant of the native core into a temporary directory and checks it without a GPU:
#   1. with nvcc hidden, the default (AUTO) configure switches CUDA off with a message instead of failing;
#   2. with nvcc and the cuSOLVER/cuBLAS headers (PyPI wheels, installed into a throwaway venv if needed), the
#      CUDA module compiles and links (cudart static, no libcublas/libcusolver in its DT_NEEDED);
#   3. the cuSOLVER/cuBLAS entry points it dlsym()s are present by name, and `_core_cuda` imports without a GPU
#      and says why it cannot run (tests/analysis/test_cuda_build.py against the fresh build).
# Usage: .ci/check_cuda.sh [workdir]   (exit 0: passed, or skipped with a message when nvcc is absent)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d /tmp/tb-cuda-check.XXXXXX)}"
PY="${PYTHON:-python3}"
mkdir -p "$WORK"
PYBIND_DIR="$("$PY" -m pybind11 --cmakedir)"
PY_EXE="$("$PY" -c 'import sys; print(sys.executable)')"
say() { printf '[check_cuda] %s\n' "$*"; }

# 1. AUTO without a CUDA compiler: configure succeeds and says so.
CUDACXX=/nonexistent/nvcc PATH="/usr/bin:/bin" cmake -S "$ROOT" -B "$WORK/nocuda" -DPython_EXECUTABLE="$PY_EXE" \
  -Dpybind11_DIR="$PYBIND_DIR" >"$WORK/nocuda.log" 2>&1 \
  || { cat "$WORK/nocuda.log"; say "FAIL: CPU-only configure"; exit 1; }
grep -q "CUDA core not built" "$WORK/nocuda.log" || { say "FAIL: no 'CUDA core not built' message"; exit 1; }
say "ok: without nvcc: $(grep -o 'CUDA core not built.*' "$WORK/nocuda.log")"

if ! command -v nvcc >/dev/null; then
  say "skip: nvcc not on PATH"
  exit 0
fi

# 2. Headers: TEMPBALANCE_CUDA_INCLUDE if given, else the NVIDIA wheels in a throwaway venv (headers only).
INC="${TEMPBALANCE_CUDA_INCLUDE:-}"
if [ -z "$INC" ]; then
  if [ ! -d "$WORK/hdr" ]; then
    "$PY" -m venv "$WORK/hdr"
    "$WORK/hdr/bin/pip" install -q --no-deps nvidia-cusolver nvidia-cublas
  fi
  INC="$(ls -d "$WORK"/hdr/lib/python3*/site-packages/nvidia/cu1*/include | head -1)"
fi
start=$(date +%s)
cmake -S "$ROOT" -B "$WORK/cuda" -DTEMPBALANCE_CUDA=ON -DTEMPBALANCE_CUDA_INCLUDE="$INC" \
  -DPython_EXECUTABLE="$PY_EXE" -Dpybind11_DIR="$PYBIND_DIR" >"$WORK/cuda-configure.log" 2>&1 \
  || { cat "$WORK/cuda-configure.log"; say "FAIL: CUDA configure"; exit 1; }
cmake --build "$WORK/cuda" -j"${JOBS:-2}" >"$WORK/cuda-build.log" 2>&1 \
  || { tail -50 "$WORK/cuda-build.log"; say "FAIL: CUDA build"; exit 1; }
say "ok: built in $(( $(date +%s) - start )) s ($(grep -o 'archs [^,]*' "$WORK/cuda-configure.log"))"

SO="$(ls "$WORK"/cuda/cuda-0/tempbalance/_cuda*/_core_cuda*.so)"  # the variant of the nvcc on PATH
# 3. Link-level checks.
if readelf -d "$SO" | grep -E 'NEEDED.*(cudart|cublas|cusolver|torch)'; then
  say "FAIL: _core_cuda must not link cudart dynamically, cuBLAS, cuSOLVER or libtorch"; exit 1
fi
strings "$SO" >"$WORK/strings.txt"  # (grep -q on a pipe would SIGPIPE strings under pipefail)
missing=0
for sym in cusolverDnXsyevBatched cusolverDnXsyevBatched_bufferSize cusolverDnXsyevd cusolverDnXsyevd_bufferSize \
           cusolverDnCreate cusolverDnSetStream cusolverDnCreateParams cublasCreate_v2 cublasSetStream_v2 \
           cublasGemmStridedBatchedEx cusolverGetVersion; do
  grep -qx "$sym" "$WORK/strings.txt" || { say "FAIL: $sym not referenced"; missing=1; }
done
[ $missing -eq 0 ] || exit 1
needed="$(readelf -d "$SO" | grep NEEDED | grep -o '\[.*\]' | tr '\n' ' ')"
say "ok: cuSOLVER/cuBLAS entry points referenced by name; NEEDED: $needed"
if command -v cuobjdump >/dev/null; then
  say "SASS: $(cuobjdump --list-elf "$SO" | grep -o 'sm_[0-9]*' | sort -u | tr '\n' ' ' || true)"
fi

# 4. Import without a GPU and the host-side tests against this build. Run from $WORK, not $ROOT: `python -m`
#    puts the working directory first on sys.path, and from $ROOT `import tempbalance` would pick up the source
#    tree, which has no compiled `_core` (the installed package has), so the planning tests used to skip (13 of
#    18). With TEMPBALANCE_CORE_CUDA set, tests/analysis/test_cuda_build.py now fails instead of skipping when `_core` is missing.
(cd "$WORK" && TEMPBALANCE_CORE_CUDA="$SO" "$PY" -m pytest -q -rs -p no:cacheprovider \
  "$ROOT/tests/analysis/test_cuda_build.py" "$ROOT/tests/analysis/test_cuda_backend.py" "$ROOT/tests/training/test_fused_gpu.py" \
  "$ROOT/tests/analysis/test_streams.py" | tee "$WORK/pytest.log")
if grep -q "skipped" "$WORK/pytest.log" && ! grep -q "a CUDA device is present" "$WORK/pytest.log"; then
  say "FAIL: tests were skipped in the CUDA check (see above)"; exit 1
fi

# dlopen + dlsym every entry point through the built module's own loader: resolve_all <cuda major> <dir>...
resolve_all() {
  "$PY" - "$SO" "$@" <<'PYEOF'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("tempbalance._core_cuda", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
got = m.load(int(sys.argv[2]), sys.argv[3:])
assert got["batched"], got
print("[check_cuda] ok: all entry points resolve in", got["cusolver"], "and", got["cublas"], "(cuSOLVER version",
      got["version"], "max Gram", got["max_n"] or "unlimited", ")")
PYEOF
}

# 5. Resolve every entry point in the real cuSOLVER/cuBLAS of the PyPI wheels (dlopen + dlsym need no GPU).
#    Only with the throwaway header venv (it gets cuSOLVER's own dependencies, ~0.3 GB); CUDA_LOAD_CHECK=0 skips.
if [ -z "${TEMPBALANCE_CUDA_INCLUDE:-}" ] && [ "${CUDA_LOAD_CHECK:-1}" = 1 ]; then
  "$WORK/hdr/bin/pip" install -q --no-deps nvidia-cusparse nvidia-nvjitlink
  LIBDIR="$(dirname "$INC")/lib"
  resolve_all 13 "$LIBDIR"
fi

# 6. The wheel a release build makes (TEMPBALANCE_CUDA=ON): it carries `_core_cuda`, installs into a fresh venv
#    and passes the wheel smoke test there (the CUDA core imports and says why it cannot run). WHEEL_CHECK=0 skips.
if [ "${WHEEL_CHECK:-1}" = 1 ]; then
  rm -rf "$WORK/dist" "$WORK/wheelenv"
  "$PY" -m pip wheel -q --no-deps -w "$WORK/dist" -C cmake.define.TEMPBALANCE_CUDA=ON \
    -C cmake.define.TEMPBALANCE_CUDA_INCLUDE="$INC" -C build-dir="$WORK/wheel-build" "$ROOT" >"$WORK/wheel.log" 2>&1 \
    || { tail -30 "$WORK/wheel.log"; say "FAIL: CUDA wheel build"; exit 1; }
  WHL="$(ls "$WORK"/dist/tempbalance-*.whl)"
  # read the listing in Python: `zipfile -l | grep -q` under pipefail fails when grep exits before the listing ends
  "$PY" -c 'import sys, zipfile; sys.exit(not any(n.startswith("tempbalance/_cuda") for n in zipfile.ZipFile(sys.argv[1]).namelist()))' "$WHL" \
    || { say "FAIL: $WHL has no _core_cuda"; exit 1; }
  "$PY" -m venv "$WORK/wheelenv"
  "$WORK/wheelenv/bin/python" -m pip install -q torch==2.13.0 "$WHL"
  TB_EXPECT_CUDA_BUILT=1 bash "$ROOT/scripts/wheel_smoke.sh" --installed "$WORK/wheelenv/bin/python"
  say "ok: CUDA wheel $(basename "$WHL") ($(du -k "$WHL" | cut -f1) kB) installs and smoke-tests"
fi

# 7. (opt-in, CUDA12_LOAD_CHECK=1, ~1.5 GB) The same against the CUDA 12 wheels the `[cu12]` extra installs, whose
#    libraries sit in one directory per package: checks that cuSOLVER's dependencies are found (preloaded).
if [ "${CUDA12_LOAD_CHECK:-0}" = 1 ]; then
  [ -d "$WORK/cu12" ] || "$PY" -m venv "$WORK/cu12"
  "$WORK/cu12/bin/pip" install -q "nvidia-cusolver-cu12>=11.7.1" "nvidia-cublas-cu12>=12.6"
  NV="$(ls -d "$WORK"/cu12/lib/python3*/site-packages/nvidia)"
  resolve_all 12 "$NV/cusolver/lib" "$NV/cublas/lib" "$NV/cusparse/lib" "$NV/nvjitlink/lib"
fi
say "passed"
