"""Checks the version before a release: the one written in tempbalance/_version.py (what the build backend puts in
the wheel's metadata) is a plain release version, CHANGELOG.md has an entry for it, and - given the git tag being
released - the tag is ``v<version>`` and the entry carries its release date (not "unreleased").

Usage: python scripts/check_version.py [TAG]      (the release workflow passes $GITHUB_REF_NAME)
Prints the version; exits 1 with the reason when a check fails.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# scikit-build-core's regex metadata provider reads the same line (pyproject.toml, metadata.version)
VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', re.M)
RELEASE = re.compile(r"^\d+\.\d+\.\d+((a|b|rc)\d+)?$")


def written_version(root: Path = ROOT) -> str:
    found = VERSION_LINE.findall((root / "tempbalance" / "_version.py").read_text())
    if len(found) != 1:
        raise ValueError(f"tempbalance/_version.py: expected one `__version__ = \"X.Y.Z\"` line, found {len(found)}")
    return found[0]


def changelog_heading(version: str, root: Path = ROOT) -> str:
    """The CHANGELOG.md heading of ``version`` (``## 0.1.0 - 2026-01-31`` or ``## 0.1.0 - unreleased``)."""
    headings = re.findall(rf"^## {re.escape(version)}( .*)?$", (root / "CHANGELOG.md").read_text(), re.M)
    if len(headings) != 1:
        raise ValueError(f"CHANGELOG.md: expected one `## {version} - ...` heading, found {len(headings)}")
    return f"## {version}{headings[0]}"


def check(tag: str | None, root: Path = ROOT) -> str:
    version = written_version(root)
    if not RELEASE.match(version):
        raise ValueError(f"tempbalance/_version.py: {version!r} is not a release version (X.Y.Z, X.Y.ZrcN, ...)")
    heading = changelog_heading(version, root)
    if tag is not None:
        if tag != f"v{version}":
            raise ValueError(f"tag {tag!r} does not match tempbalance/_version.py ({version}): tag v{version}, or "
                             "change the version in tempbalance/_version.py and CHANGELOG.md first")
        if not re.fullmatch(rf"## {re.escape(version)} - \d{{4}}-\d{{2}}-\d{{2}}", heading):
            raise ValueError(f"CHANGELOG.md: {heading!r} must carry the release date (## {version} - YYYY-MM-DD) "
                             "when the tag is pushed")
    return version


def main(argv: list[str]) -> int:
    try:
        version = check(argv[0] if argv else None)
    except (ValueError, OSError) as e:
        print(f"check_version: {e}", file=sys.stderr)
        return 1
    print(version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
