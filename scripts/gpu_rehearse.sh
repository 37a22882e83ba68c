#!/usr/bin/env bash
# A rehearsal, on a machine without a GPU (CI runs it), of scripts/gpu_check.sh on the GPU machine's image:
#   - its `python3` is a virtual environment's interpreter that holds the packages (torch, numpy, pybind11,
#     scikit-build-core, pytest, the nvidia cuSOLVER/cuBLAS headers) - so a venv made from it sees none of them;
#     here: a venv whose site-packages links $PY's packages, less scipy-openblas32 and tempbalance (the image has
#     neither);
#   - no package index: pip is pointed at an address that refuses (and PIP_NO_INDEX=1), so only the wheels in .whl/
#     (scripts/gpu_wheels.sh, run here first) can be installed;
#   - nvcc is not on PATH (it stays where CUDA installs it, e.g. /usr/local/cuda/bin);
#   - the command runs in a copy of the working tree (tracked and untracked-not-ignored files, plus .whl/: what the
#     device call sends with carry=[".whl"]).
# Then it runs `gpu_check.sh --stage build` (the real build, the CUDA tests), `--stage checks` (the checks against
# the CPU stand-in of the CUDA core, as far as no GPU is needed), and, after deleting .gpu/site (a fresh machine),
# `--stage checks --quick` (which must rebuild first), and checks what came back in $OUT.
#
#   bash scripts/gpu_check.sh --rehearse                 # (= bash scripts/gpu_rehearse.sh)
#   bash scripts/gpu_check.sh --rehearse --script FILE   # rehearse another gpu_check.sh (e.g. an older one)
#   bash scripts/gpu_check.sh --rehearse --cmd 'CMD'     # run CMD in the rehearsal's environment and tree instead
#   --keep DIR: work in DIR (kept) instead of a temporary folder
# PY: a Python with torch, numpy, pytest, pybind11, scikit-build-core (default python3); what it lacks of the last
# three is installed into the rehearsal's image from the package index first.
set -euo pipefail
{ # (the whole script is read before it runs: editing it during a rehearsal cannot change the one running)
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-python3}"
SCRIPT="" CMD="" KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --script) SCRIPT="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    --cmd) CMD="$2"; shift ;;
    --keep) KEEP="$2"; shift ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
  esac
  shift
done
start=$(date +%s)
say() { printf '[rehearse %3ss] %s\n' "$(( $(date +%s) - start ))" "$*"; }
fail() { say "FAIL: $*"; exit 1; }
if [ -n "$KEEP" ]; then REH="$KEEP"; rm -rf "$REH"; mkdir -p "$REH"; else
  REH="$(mktemp -d /tmp/tb-gpu-rehearse.XXXXXX)"; trap 'rm -rf "$REH"' EXIT; fi
REH="$(cd "$REH" && pwd)"

# 1. The wheels the image lacks, fetched here (the package index is reachable here, not in the rehearsal).
compgen -G "$ROOT/.whl/scipy_openblas32-*.whl" >/dev/null || bash "$ROOT/scripts/gpu_wheels.sh"

# 2. The image's interpreter: a venv whose site-packages links $PY's packages but scipy-openblas32 and tempbalance.
"$PY" -m venv "$REH/image"
IMG="$REH/image/bin/python"
img_site="$("$IMG" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" - "$img_site" <<'EOF'
import os, re, sys, sysconfig
dest = sys.argv[1]
skip = re.compile(r"(tempbalance|_?editable|__editable__|scipy_openblas32|pip|setuptools|_distutils_hack|"
                  r"distutils-precedence)", re.I)
for src in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
    for name in os.listdir(src):
        if not skip.match(name) and not os.path.exists(os.path.join(dest, name)):
            os.symlink(os.path.join(src, name), os.path.join(dest, name))
EOF
missing="$("$IMG" -c 'import importlib.util as u; print(" ".join(p for m, p in [("pybind11", "pybind11"),
  ("scikit_build_core", "scikit-build-core"), ("pytest", "pytest"), ("cmake", "cmake"), ("ninja", "ninja")]
  if u.find_spec(m) is None))')"
[ -z "$missing" ] || { say "image: installing $missing (from the index: the real image has them)"; \
  "$IMG" -m pip install -q --disable-pip-version-check $missing; }
"$IMG" -c 'import torch, numpy' || fail "$PY has no torch/numpy to lend the rehearsal's image"
# cuSOLVER/cuBLAS headers where the image's nvidia-cusolver/nvidia-cublas wheels keep them (nvidia/cu13/include):
# the headers scripts/build_wheels.sh cached, else the same wheels' headers, fetched once.
if ! "$IMG" -c 'import glob, importlib.util as u; s = u.find_spec("nvidia")
assert any(glob.glob(d + "/cu13/include/cusolverDn.h") for d in (s.submodule_search_locations if s else []))' 2>/dev/null; then
  versions="$(grep -o '^CUSOLVER13=[0-9.]* CUBLAS13=[0-9.]*' "$ROOT/scripts/build_wheels.sh")"
  eval "$versions"
  hdr="${TB_BUILD_CACHE:-$HOME/.cache/tempbalance-build}/cu13-$CUSOLVER13-$CUBLAS13-headers"
  if [ ! -f "$hdr/.done" ]; then
    hdr="$HOME/.cache/tempbalance-rehearse/cu13-$CUSOLVER13-$CUBLAS13-headers"
    if [ ! -f "$hdr/.done" ]; then
      say "fetching the cuSOLVER/cuBLAS headers (nvidia-cusolver==$CUSOLVER13, nvidia-cublas==$CUBLAS13), once"
      "$IMG" -m pip download -q --disable-pip-version-check --no-deps -d "$REH/nv" \
        "nvidia-cusolver==$CUSOLVER13" "nvidia-cublas==$CUBLAS13"
      "$IMG" - "$REH/nv" "$hdr" <<'EOF'
import glob, os, shutil, sys, zipfile
src, dest = sys.argv[1:]
for wheel in glob.glob(os.path.join(src, "*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith("nvidia/cu13/include/") and not name.endswith("/"):
                target = os.path.join(dest, name[len("nvidia/cu13/include/"):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(name) as f, open(target, "wb") as out:
                    shutil.copyfileobj(f, out)
open(os.path.join(dest, ".done"), "w").close()
EOF
      rm -rf "$REH/nv"
    fi
  fi
  mkdir -p "$img_site/nvidia/cu13"
  ln -s "$hdr" "$img_site/nvidia/cu13/include"
fi

# 3. nvcc off PATH: every PATH folder that has one is replaced by links to its other entries. $PY's own folder
# goes too: `python3` is the image's. gpu_check.sh must find nvcc where CUDA installs it: /usr/local/cuda here; on
# a machine whose CUDA is elsewhere, the folder above its nvcc's stands for it (TB_CUDA_ROOTS).
roots=""
if ! compgen -G "/usr/local/cuda*/bin/nvcc" >/dev/null; then
  command -v nvcc >/dev/null || fail "no nvcc here (the rehearsal builds the CUDA core)"
  roots="$(dirname "$(dirname "$(command -v nvcc)")")"
fi
newpath="$REH/image/bin"
py_bin="$(dirname "$(command -v "$PY")")"
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -d "$d" ] && [ "$d" != "$py_bin" ] || continue
  if [ -e "$d/nvcc" ]; then
    farm="$REH/path/$(echo "$d" | tr '/' '_')"; mkdir -p "$farm"
    for f in "$d"/*; do [ "$(basename "$f")" = nvcc ] || ln -s "$f" "$farm/"; done
    d="$farm"
  fi
  newpath="$newpath:$d"
done

# 4. The working tree as the device gets it.
mkdir -p "$REH/tree"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
   [ -e "$f" ] && printf '%s\0' "$f"; done | xargs -0 cp --parents -t "$REH/tree")
cp -r "$ROOT/.whl" "$REH/tree/.whl"
[ -z "$SCRIPT" ] || cp "$SCRIPT" "$REH/tree/scripts/gpu_check.sh"

run() {  # the command in the tree, in the image's environment
  (cd "$REH/tree" && env -u PYTHONPATH -u CUDACXX -u VIRTUAL_ENV -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL \
     PATH="$newpath" PY=python3 PIP_NO_INDEX=1 PIP_INDEX_URL=http://127.0.0.1:9/simple PIP_CONFIG_FILE=/dev/null \
     PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" \
     TB_GPU_CHECK_REHEARSAL=1 TB_GPU_TEST_TIMEOUT=1200 ${roots:+TB_CUDA_ROOTS="$roots"} OUT="$REH/out" bash -c "$1")
}
run 'command -v nvcc' && fail "nvcc is still on PATH"
run 'python3 -c "import scipy_openblas32"' 2>/dev/null && fail "the image must lack scipy-openblas32"
run 'python3 -m venv /tmp/tb-rehearse-probe-$$ && /tmp/tb-rehearse-probe-$$/bin/python -c "import torch"' \
  2>/dev/null && fail "a venv made from the image's python3 must not see its torch"
rm -rf /tmp/tb-rehearse-probe-*
say "image ready: python3 = $IMG (a venv; a venv made from it sees no torch), no index, nvcc off PATH"

if [ -n "$CMD" ]; then
  mkdir -p "$REH/out"; run "$CMD"; exit $?
fi

# 5. The calls of a lease, in order; each must pass and leave its files in $OUT.
expect() {  # OUT holds at most 8 files, with names the device tool brings back, and these
  local n; n=$(find "$REH/out" -type f | wc -l)
  [ "$n" -le 8 ] || fail "$n files in OUT (the device tool brings back 8)"
  ! find "$REH/out" -type f | grep -v -E '/[A-Za-z0-9._-]+$' || fail "a file name the device tool would not bring back"
  for f in "$@"; do [ -s "$REH/out/$f" ] || fail "$1: no $f in OUT"; done
}
stage() {
  say "gpu_check.sh $1"
  rm -rf "$REH/out"; mkdir -p "$REH/out"
  set -o pipefail
  run "bash scripts/gpu_check.sh $1" 2>&1 | tee "$REH/stage.log" || fail "gpu_check.sh $1 failed (rehearsal)"
}
stage "--stage build"
expect build.log pytest.log gpu_cpu_selftest.md gpu_cpu_selftest.json
grep -q "found off PATH" "$REH/stage.log" || fail "nvcc was not found off PATH"
stage "--stage checks"
expect checks.log gpu_cpu_selftest.md gpu_cpu_selftest.json
grep -q "using the build in .gpu/" "$REH/stage.log" || fail "stage checks rebuilt although the build was there"
rm -rf "$REH/tree/.gpu/site"  # a fresh machine: stage checks must build first
stage "--stage checks --quick"
expect build.log checks.log gpu_cpu_selftest.md gpu_cpu_selftest.json
grep -q "a fresh machine" "$REH/stage.log" || fail "stage checks did not say it rebuilt"
say "passed: both stages (and a rebuild on a fresh machine) in an image-like environment"
exit 0
}
