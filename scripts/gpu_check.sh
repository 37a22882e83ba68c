#!/usr/bin/env bash
# The CUDA core on a GPU machine with no network, in calls of at most ~5 minutes each (docs/CUDA.md, "Spending a
# lease"):
#
#   bash scripts/gpu_check.sh --stage build            # ~2-3 min: build for the GPU found, then the CUDA tests
#   bash scripts/gpu_check.sh --stage checks [--quick] [--budget S]  # ~4.5 min (--quick ~2.5): gpu_check.py
#   bash scripts/gpu_check.sh --stage all [--quick]    # both in one call (~7 min)
#   bash scripts/gpu_check.sh --selftest-cpu           # anywhere: gpu_check.py against the CPU stand-in
#   bash scripts/gpu_check.sh --rehearse [--script F | --cmd C]   # here, in CI: both stages in an image-like
#                                                      # environment (scripts/gpu_rehearse.sh)
#
# The machine's `python3` ($PY) is itself a virtual environment's interpreter: a venv made from it would see none of
# its packages (torch, pybind11, scikit-build-core, the nvidia-* headers). So nothing here makes a venv: $PY is used
# as it is, and what it lacks (scipy-openblas32: scripts/gpu_wheels.sh fetches it into .whl/, which the call must
# carry) is installed with `pip install --no-index --no-deps --target .gpu/site`, then the package itself is built
# into the same folder, which goes first on PYTHONPATH. Its torch is never upgraded or touched.
#
# .gpu/ (git-ignored, inside the tree so that a warm machine keeps it between calls): site/ (wheels + the built
# package), build/ (CMake's, for a fast rebuild), build.json (what was built, from which sources, and the tests'
# verdict). `--stage checks` rebuilds first when .gpu/ is missing (a fresh machine) or the sources changed (a fix).
#
# nvcc: $CUDACXX, else nvcc on PATH, else where CUDA installs it ($CUDA_HOME, $CUDA_PATH, /usr/local/cuda,
# /usr/local/cuda-*, /opt/cuda; TB_CUDA_ROOTS overrides that list), else the nvidia-cuda-nvcc wheel of $PY.
# Architecture: CMAKE_CUDA_ARCHITECTURES, else <compute capability>-real of the GPU torch sees (90-real on an H200).
#
# Results go to $OUT (the device tool's folder; default ./gpu_check_out), at most 8 files: gpu_<gpu>.md and .json
# (the report, rewritten after every check, so a run stopped at its time limit keeps what it measured), build.log,
# pytest.log, checks.log. Exit 1 when something failed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
STATE="$ROOT/.gpu"
SITE="$STATE/site"
# Set by scripts/gpu_rehearse.sh: no GPU here; build for 90-real and run the checks against the CPU stand-in.
REHEARSAL="${TB_GPU_CHECK_REHEARSAL:-0}"
TEST_TIMEOUT="${TB_GPU_TEST_TIMEOUT:-240}"  # the CUDA tests (~1 min on the GPU machine's 16 cores)
STAGE="" QUICK=0 SELFTEST=0 BUDGET=""
usage() { sed -n '2,10p' "$0" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) STAGE="${2:-}"; shift ;;
    --quick) QUICK=1 ;;
    --budget) BUDGET="$2"; shift ;;  # seconds for gpu_check.py's checks (default 270; --quick 160)
    --selftest-cpu) SELFTEST=1 ;;
    --rehearse) shift; exec bash "$ROOT/scripts/gpu_rehearse.sh" "$@" ;;
    --out) OUT_DIR="$2"; shift ;;
    *) usage ;;
  esac
  shift
done
[ "$SELFTEST" = 1 ] || case "$STAGE" in build|checks|all) ;; *) usage ;; esac
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
start=$(date +%s)
say() { printf '[gpu_check.sh %3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
# $PY with our folder first (the brought wheels and the built package), from outside the source tree so that
# `import tempbalance` is the built one.
pysite() { (mkdir -p "$STATE/run" && cd "$STATE/run" && PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$@"); }

if [ "$SELFTEST" = 1 ]; then
  # Run from outside the source tree so `import tempbalance` is the installed package (with its compiled core).
  cd "$OUT_DIR"
  "$PY" -c "import tempbalance._core" 2>/dev/null || fail "$PY has no installed tempbalance (pip install .)"
  exec "$PY" "$ROOT/scripts/gpu_check.py" --selftest-cpu --out "$OUT_DIR" $([ "$QUICK" = 1 ] && echo --quick)
fi

# The sources the build depends on: a change (a fix between two calls) means a rebuild.
source_hash() {
  (cd "$ROOT" && find tempbalance csrc cmake CMakeLists.txt pyproject.toml -type f ! -name '*.so' ! -name '*.pyc' \
     ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-12)
}

install_wheels() {
  mkdir -p "$SITE"
  if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$ROOT"/.whl/*.whl || fail "installing the wheels of .whl/ into $SITE"
  fi
  local missing
  missing="$(pysite - <<'EOF'
import importlib.util
need = {"torch": "the image", "numpy": "the image", "pybind11": "the image", "scikit_build_core": "the image",
        "pytest": "the image", "scipy_openblas32": "scripts/gpu_wheels.sh"}
print(" ".join(f"{m} ({w})" for m, w in need.items() if importlib.util.find_spec(m) is None))
EOF
)"
  [ -z "$missing" ] || fail "$PY lacks: $missing. Fetch wheels here with scripts/gpu_wheels.sh and carry .whl"
}

find_nvcc() {
  local c roots
  if [ -n "${CUDACXX:-}" ]; then
    [ -x "$CUDACXX" ] || fail "CUDACXX=$CUDACXX is not an executable"; NVCC="$CUDACXX"; return
  fi
  if command -v nvcc >/dev/null; then NVCC="$(command -v nvcc)"; return; fi
  roots="${TB_CUDA_ROOTS:-${CUDA_HOME:-} ${CUDA_PATH:-} /usr/local/cuda $(ls -d /usr/local/cuda-* 2>/dev/null | sort -V -r) /opt/cuda}"
  for c in $roots; do
    [ -x "$c/bin/nvcc" ] && { NVCC="$c/bin/nvcc"; return; }
  done
  c="$("$PY" -c 'import glob, importlib.util as u; s = u.find_spec("nvidia"); print(next(iter(sorted(
    p for d in (s.submodule_search_locations if s else []) for p in glob.glob(d + "/cu*/bin/nvcc"))), ""))' 2>/dev/null || true)"
  [ -n "$c" ] && [ -x "$c" ] && { NVCC="$c"; return; }
  fail "no nvcc: not on PATH, not in ${roots}, not in $PY's nvidia wheels (set CUDACXX)"
}

gpu_arch() {
  if [ -n "${CMAKE_CUDA_ARCHITECTURES:-}" ]; then ARCH="$CMAKE_CUDA_ARCHITECTURES"; return; fi
  local cc
  cc="$("$PY" -c 'import torch; print("%d%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")')"
  if [ -n "$cc" ]; then ARCH="${cc}-real"; return; fi
  [ "$REHEARSAL" = 1 ] || fail "torch sees no CUDA device ($("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)'))"
  ARCH="90-real"; say "rehearsal: no GPU here, building for $ARCH (an H200's)"
}

install_package() {
  PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pip install --no-index --no-deps --no-build-isolation \
    --no-compile --no-cache-dir --upgrade --target "$SITE" -C cmake.define.TEMPBALANCE_CUDA=ON \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCH" -C build-dir="$STATE/build" "$ROOT"
}

# Build the package with the CUDA core into $SITE; records .gpu/build.json. Reuses .gpu/build (CMake's build dir).
build() {
  local why="$1" t0 hash so status
  t0=$(date +%s)
  say "build ($why)"
  say "python: $("$PY" -c 'import sys, torch; print(sys.executable, sys.version.split()[0], "torch", torch.__version__, "CUDA", torch.version.cuda)')"
  install_wheels
  find_nvcc
  export CUDACXX="$NVCC"
  say "nvcc: $NVCC ($("$NVCC" --version | grep -o 'release [0-9.]*')$(command -v nvcc >/dev/null || echo ', found off PATH'))"
  gpu_arch
  hash="$(source_hash)"
  rm -rf "$SITE/tempbalance" "$SITE"/tempbalance-*.dist-info
  if ! install_package >"$OUT_DIR/build.log" 2>&1; then
    if [ -d "$STATE/build" ]; then  # a stale CMake build folder (another tree path, another nvcc): once from scratch
      say "build failed with the kept build folder; once more from scratch"
      rm -rf "$STATE/build"
      install_package >>"$OUT_DIR/build.log" 2>&1 || { tail -40 "$OUT_DIR/build.log"; fail "build (see build.log)"; }
    else
      tail -40 "$OUT_DIR/build.log"; fail "build (see build.log)"
    fi
  fi
  so="$(pysite -c 'import tempbalance, os; from tempbalance import cuda_backend as c
assert os.path.realpath(tempbalance.__file__).startswith(os.path.realpath(os.environ["PYTHONPATH"].split(":")[0])), tempbalance.__file__
m = c._import(); assert m is not None, c._reason; print(m.__file__)')" || fail "the built package does not import from $SITE"
  status="$(pysite -c 'from tempbalance import cuda_backend; print(cuda_backend.cuda_status())')"
  say "built in $(( $(date +%s) - t0 )) s for $ARCH: $so; $status"
  pysite - "$STATE/build.json" "$hash" "$ARCH" "$NVCC" "$so" "$status" "$(( $(date +%s) - t0 ))" "$why" <<'EOF'
import json, subprocess, sys
path, source, arch, nvcc, so, status, seconds, why = sys.argv[1:]
version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
json.dump({"source": source, "arch": arch, "nvcc": nvcc, "nvcc_version": version, "module": so,
           "cuda_status": status, "seconds": int(seconds), "why": why}, open(path, "w"), indent=1)
EOF
}

# The CUDA tests against the built module (the same files .ci/check_cuda.sh runs, plus the dispatch's).
cuda_tests() {
  local t0 so rc=0 summary
  t0=$(date +%s)
  so="$(pysite -c 'import json, sys; print(json.load(open(sys.argv[1]))["module"])' "$STATE/build.json")"
  (cd "$STATE/run" && TEMPBALANCE_CORE_CUDA="$so" PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" \
    timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -rs -p no:cacheprovider "$ROOT/tests/analysis/test_cuda_build.py" \
    "$ROOT/tests/analysis/test_cuda_backend.py" "$ROOT/tests/training/test_fused_gpu.py" \
    "$ROOT/tests/analysis/test_streams.py" "$ROOT/tests/analysis/test_fit_rule.py") >"$OUT_DIR/pytest.log" 2>&1 || rc=$?
  summary="$(grep -E '(passed|failed|error)' "$OUT_DIR/pytest.log" | tail -1 | tr -d '=' | sed 's/^ *//')"
  [ "$rc" = 124 ] && summary="timed out after $TEST_TIMEOUT s; $summary"
  say "CUDA tests (exit $rc, $(( $(date +%s) - t0 )) s): $summary"
  pysite - "$STATE/build.json" "$rc" "$summary" "$(( $(date +%s) - t0 ))" <<'EOF'
import json, sys
path, rc, summary, seconds = sys.argv[1:]
info = json.load(open(path))
info["tests"] = {"exit": int(rc), "summary": summary, "seconds": int(seconds)}
json.dump(info, open(path, "w"), indent=1)
EOF
  return "$rc"
}

# A usable build of these sources, or a rebuild (a fresh machine, or sources changed by a fix).
ensure_build() {
  if [ ! -f "$STATE/build.json" ] || [ ! -d "$SITE/tempbalance" ]; then
    build "no build in .gpu/ (a fresh machine?): building first, ~1-2 min"
  elif [ "$(pysite -c 'import json, sys; print(json.load(open(sys.argv[1]))["source"])' "$STATE/build.json")" \
         != "$(source_hash)" ]; then
    build "the sources changed since the last build: rebuilding"
  else
    say "using the build in .gpu/ ($(pysite -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["arch"], d["module"])' "$STATE/build.json"))"
  fi
}

checks() {
  local args=(--out "$OUT_DIR" --build-info "$STATE/build.json")
  [ "$QUICK" = 1 ] && args+=(--quick)
  [ -n "$BUDGET" ] && args+=(--budget "$BUDGET")
  [ "$REHEARSAL" = 1 ] && args+=(--selftest-cpu)
  set +e
  pysite -u "$ROOT/scripts/gpu_check.py" "${args[@]}" 2>&1 | tee "$OUT_DIR/checks.log"
  local rc=${PIPESTATUS[0]}
  set -e
  return "$rc"
}

status=0
case "$STAGE" in
  build)
    build "stage build"
    cuda_tests || status=1
    pysite "$ROOT/scripts/gpu_check.py" --report-only --out "$OUT_DIR" --build-info "$STATE/build.json" \
      $([ "$REHEARSAL" = 1 ] && echo --selftest-cpu) || status=1
    ;;
  checks)
    ensure_build
    checks || status=1
    ;;
  all)
    build "stage all"
    cuda_tests || status=1
    checks || status=1
    ;;
esac
say "done: stage $STAGE$([ "$QUICK" = 1 ] && echo ' --quick'), exit $status; results in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exit $status
