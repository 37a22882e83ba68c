#!/usr/bin/env bash
# Runs a command the way a user without a build toolchain would: no C/C++ compiler, nvcc, cmake, ninja or make on
# PATH (each PATH directory holding one is replaced by a directory of links to everything else in it) and CC, CXX,
# CUDACXX unset. Fails if one of cc, c++, gcc, g++, nvcc, cmake can still be found.
#   scripts/no_compilers.sh [--only-nvcc] COMMAND [ARG]...
#   --only-nvcc: hide only the CUDA compiler (a source build then makes the CPU core alone)
set -euo pipefail
check="cc c++ gcc g++ nvcc cmake"
hidden='^(cc|c\+\+|cpp|gcc|g\+\+|c89|c99|clang|clang\+\+|clang-[0-9]+|(x86_64|aarch64)-linux-gnu-.*|gcc-[0-9.]+|g\+\+-[0-9.]+|cpp-[0-9.]+|nvcc|cmake|ninja|make|gmake|zig)$'
if [ "${1:-}" = --only-nvcc ]; then
  hidden='^nvcc$' check=nvcc; shift
fi
filtered="$(mktemp -d /tmp/tb-nocc.XXXXXX)"
trap 'rm -rf "$filtered"' EXIT
has_hidden() {  # (a loop, not `ls | grep -q`: under pipefail grep's early exit would make ls fail)
  local f
  for f in "$1"/*; do [[ ${f##*/} =~ $hidden ]] && return 0; done
  return 1
}
new_path=""
IFS=: read -ra dirs <<<"$PATH"
for i in "${!dirs[@]}"; do
  d="${dirs[$i]}"
  [ -d "$d" ] || continue
  if ! has_hidden "$d"; then
    new_path="$new_path:$d"; continue
  fi
  mkdir -p "$filtered/$i"
  for f in "$d"/*; do
    name="${f##*/}"
    if [ -d "$f" ] || [ ! -x "$f" ] || [[ $name =~ $hidden ]]; then continue; fi
    if [[ $name == python* ]]; then  # a link would lose a venv's pyvenv.cfg: exec the real path instead
      printf '#!/bin/sh\nexec "%s" "$@"\n' "$f" >"$filtered/$i/$name"; chmod +x "$filtered/$i/$name"
    else
      ln -s "$f" "$filtered/$i/$name"
    fi
  done
  new_path="$new_path:$filtered/$i"
done
export PATH="${new_path#:}"
[ "$check" = nvcc ] || unset CC CXX
unset CUDACXX
for tool in $check; do
  if command -v "$tool" >/dev/null; then echo "no_compilers: $tool is still on PATH ($(command -v "$tool"))" >&2; exit 1; fi
done
"$@"
