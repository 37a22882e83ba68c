"""`pip check` for this environment, except the packages named with --except (installed with `pip install --no-deps`
for the files they ship; their own requirements are never used). Prints what else is broken, as a note: a broken
package elsewhere in the environment need not stop the tests.

Usage: python scripts/pip_check.py [--except NAME...]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--except", dest="skip", nargs="*", default=[], metavar="NAME")
    args = parser.parse_args(argv)
    skip = {_canonical(n) for n in args.skip}
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    # each problem is one line that starts with the name of the package whose requirement is not met
    broken = [line for line in out.stdout.splitlines()
              if line.strip() and not line.startswith("No broken requirements")
              and _canonical(line.split()[0]) not in skip]
    if broken:
        print("note: pip check finds broken requirements (besides those of the --no-deps data packages):", *broken,
              sep="\n  ", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
