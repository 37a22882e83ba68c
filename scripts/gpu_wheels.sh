#!/usr/bin/env bash
# Fetches, here (where pip reaches an index), the wheels the offline GPU machine lacks into .whl/ (git-ignored; the
# device call must name it in `carry`). scripts/gpu_check.sh installs them there with
# `pip install --no-index --no-deps --target .gpu/site` and puts that folder on PYTHONPATH, over the image's own
# packages (its torch is never touched).
#
# What the GPU machine's image lacks, of everything the build, the CUDA tests and scripts/gpu_check.py import
# (compared with the image's package list, docs/CUDA.md "Spending a lease"): only scipy-openblas32, the CPU
# core's LAPACK (a run-time dependency of tempbalance and a build requirement). Its wheel is `py3-none`, so the same
# file also serves the CPU rehearsal (`gpu_check.sh --rehearse`) under another Python.
#
#   bash scripts/gpu_wheels.sh                      # -> .whl/scipy_openblas32-<version>-py3-none-manylinux_...whl
#   bash scripts/gpu_wheels.sh --dest DIR NAME==VER # more (exact versions), e.g. a newer scikit-build-core
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.whl"
PYVER=3.12  # the image's Python (3.12.3)
# Exact versions: the one the CPU core is built and tested against here (pyproject: scipy-openblas32>=0.3.27).
WHEELS=("scipy-openblas32==0.3.34.481.3")
while [ $# -gt 0 ]; do
  case "$1" in
    --dest) DEST="$2"; shift ;;
    --python-version) PYVER="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *==*) WHEELS+=("$1") ;;
    *) echo "usage: $0 [--dest DIR] [--python-version X.Y] [NAME==VERSION ...]" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$DEST"
# One version of each package: two of one name would stop the install there.
for spec in "${WHEELS[@]}"; do
  stem="$(echo "${spec%%==*}" | tr '-' '_')"
  find "$DEST" -maxdepth 1 -name "${stem}-*.whl" ! -name "${stem}-${spec##*==}-*" -delete
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"/*.whl
echo "[gpu_wheels] $(du -sh "$DEST" | cut -f1) in $DEST; carry it to the GPU machine (e.g. carry=[\".whl\"])"
