"""Checks a built (repaired) tempbalance wheel the way a user's machine would see it; scripts/build_wheels.sh runs it.

For every extension module in the wheel: it needs no shared library but the policy's system libraries and the
scipy-openblas32 wheel's (nothing vendored; no CUDA library: cudart is static, cuSOLVER/cuBLAS dlopened); every
symbol version it asks of glibc, libstdc++ and libgcc_s is one the --policy allows (auditwheel's own policy table);
it has no unversioned undefined symbol other than Python's C API, scipy-openblas32's LAPACK and the usual weak
ones (an unversioned glibc symbol would mean a symbol the target glibc lacks). For every CUDA variant (`tempbalance/_cuda<major>/`): the
SASS and PTX architectures `cuobjdump --list-elf/--list-ptx` reports are exactly --sass / --ptx, and the variants
present are exactly --cuda. Prints one line per module (sizes, versions, architectures); exits 1 on any failure.

Usage: python check_wheel.py WHEEL [--policy manylinux_2_28] [--cuda 12,13] [--cuobjdump PATH] [--sass 75,80,86,89,90] [--ptx 90]
Needs auditwheel (and its pyelftools).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile

import auditwheel.policy
from elftools.elf.elffile import ELFFile

# Besides the policy's system libraries: the dynamic loader and the declared scipy-openblas32 dependency.
ALSO_NEEDED = {"ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libscipy_openblas.so"}
# Undefined symbols that legitimately carry no version: the interpreter's C API and scipy-openblas32's prefixed
# LAPACK (found at load time in the process / through the rpath), and weak hooks nothing needs to define.
UNVERSIONED_OK = re.compile(r"^(_?Py|scipy_|__gmon_start__$|_ITM_|_ZGTt|__cxa_finalize$|__cxa_pure_virtual$)")


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


def load_policy(name: str, arch: str = "x86_64") -> tuple[set[str], dict[str, set[str]]]:
    """(allowed NEEDED, {prefix: allowed versions}) of a manylinux policy, from auditwheel's table."""
    path = os.path.join(os.path.dirname(auditwheel.policy.__file__), "manylinux-policy.json")
    with open(path) as fh:
        policy = next(p for p in json.load(fh) if p["name"] == name or name in p["aliases"])
    return set(policy["lib_whitelist"]) | ALSO_NEEDED, {k: set(v) for k, v in policy["symbol_versions"][arch].items()}


def dynamic_imports(path: str) -> tuple[list[str], dict[str, set[str]], list[str]]:
    """(NEEDED, {version prefix: versions} e.g. {"GLIBC": {"2.14"}}, undefined symbols without a version)."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        needed = [t.needed for t in elf.get_section_by_name(".dynamic").iter_tags() if t.entry.d_tag == "DT_NEEDED"]
        index_names: dict[int, str] = {}
        verneed = elf.get_section_by_name(".gnu.version_r")
        versions: dict[str, set[str]] = {}
        if verneed is not None:
            for _, auxes in verneed.iter_versions():
                for aux in auxes:
                    index_names[aux["vna_other"]] = aux.name
                    prefix, _, number = aux.name.partition("_")
                    versions.setdefault(prefix, set()).add(number)
        versym = elf.get_section_by_name(".gnu.version")
        unversioned = []
        for i, sym in enumerate(elf.get_section_by_name(".dynsym").iter_symbols()):
            if i == 0 or sym["st_shndx"] != "SHN_UNDEF":
                continue
            ndx = versym.get_symbol(i)["ndx"] if versym is not None else "VER_NDX_GLOBAL"
            if ndx in ("VER_NDX_LOCAL", "VER_NDX_GLOBAL") or ndx not in index_names:
                if sym["st_info"]["bind"] != "STB_WEAK" and not UNVERSIONED_OK.match(sym.name):
                    unversioned.append(sym.name)
    return needed, versions, unversioned


def cuda_archs(cuobjdump: str, path: str) -> tuple[list[str], list[str]]:
    """(SASS archs, PTX archs) embedded in a module, e.g. (['sm_75', ...], ['sm_90'])."""
    def listing(flag: str) -> list[str]:
        out = subprocess.run([cuobjdump, flag, path], capture_output=True, text=True)
        if out.returncode != 0 and "does not contain" not in out.stderr + out.stdout:
            raise RuntimeError(f"{cuobjdump} {flag} {path}: {out.stderr.strip()}")
        return sorted(set(re.findall(r"sm_(\d+)", out.stdout)), key=int)
    return [f"sm_{a}" for a in listing("--list-elf")], [f"sm_{a}" for a in listing("--list-ptx")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel")
    ap.add_argument("--policy", default="manylinux_2_28", help="the manylinux policy every module must meet")
    ap.add_argument("--cuda", default="", help="CUDA majors whose core must be present, e.g. 12,13 ('' = none)")
    ap.add_argument("--cuobjdump", default="cuobjdump")
    ap.add_argument("--sass", default="75,80,86,89,90")
    ap.add_argument("--ptx", default="90")
    args = ap.parse_args()
    want_sass = [f"sm_{a}" for a in args.sass.split(",")]
    want_ptx = [f"sm_{a}" for a in args.ptx.split(",")]
    want_cuda = sorted(int(m) for m in args.cuda.split(",") if m)
    arch = "aarch64" if "aarch64" in os.path.basename(args.wheel) else "x86_64"
    allowed_needed, allowed_versions = load_policy(args.policy, arch)
    failures: list[str] = []
    print(f"{os.path.basename(args.wheel)}: {os.path.getsize(args.wheel) / 2**20:.2f} MiB")
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(args.wheel) as zf:
        names = zf.namelist()
        vendored = [n for n in names if ".libs/" in n]
        if vendored:
            failures.append(f"auditwheel vendored libraries into the wheel: {vendored}")
        modules = [n for n in names if n.endswith(".so")]
        found_cuda = sorted(int(m) for m in {re.match(r"tempbalance/_cuda(\d+)/", n).group(1)
                                             for n in modules if re.match(r"tempbalance/_cuda\d+/", n)})
        if found_cuda != want_cuda:
            failures.append(f"CUDA variants {found_cuda}, expected {want_cuda}")
        if not any(re.match(r"tempbalance/_core\.", n) for n in modules):
            failures.append("no CPU core (tempbalance/_core*.so)")
        for name in modules:
            path = zf.extract(name, tmp)
            needed, versions, unversioned = dynamic_imports(path)
            newest = {k: max(v, key=_version_key) for k, v in versions.items()}
            line = (f"  {name}: {os.path.getsize(path) / 2**20:.2f} MiB; NEEDED {' '.join(needed)}; newest "
                    + ", ".join(f"{k}_{v}" for k, v in sorted(newest.items())))
            bad_needed = sorted(set(needed) - allowed_needed)
            if bad_needed:
                failures.append(f"{name} needs {bad_needed}, outside {args.policy} (nothing may be vendored)")
            for prefix, have in sorted(versions.items()):
                too_new = sorted(have - allowed_versions.get(prefix, have), key=_version_key)
                if too_new:
                    failures.append(f"{name} needs {prefix} {too_new}, newer than {args.policy} allows")
            if unversioned:
                failures.append(f"{name} has unversioned undefined symbols {unversioned[:8]}")
            if "/_cuda" in name:
                sass, ptx = cuda_archs(args.cuobjdump, path)
                line += f"; SASS {' '.join(sass)}; PTX {' '.join(ptx)}"
                if sass != want_sass or ptx != want_ptx:
                    failures.append(f"{name}: SASS {sass} PTX {ptx}, expected SASS {want_sass} PTX {want_ptx}")
            print(line)
    for f in failures:
        print(f"  FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
