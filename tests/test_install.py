"""What a user sees of the installed package: its version (one source, the same everywhere) and, when a source tree
without the compiled core shadows the installed package, a warning that names the cause and the fix."""
from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tempbalance
from tempbalance import _native, cli

INSTALLED = importlib.metadata.version("tempbalance")


def test_version_is_the_installed_metadata_version():
    source = (Path(tempbalance.__file__).parent / "_version.py").read_text()
    written = re.search(r'^__version__ = "([^"]+)"$', source, re.M).group(1)
    assert tempbalance.__version__ == written == INSTALLED


def test_version_option_prints_the_version_the_package_was_built_with(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"tempbalance {INSTALLED}\n"


def test_the_command_prints_the_version(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tempbalance", "--version"], capture_output=True, text=True,
                         check=True, cwd=tmp_path)  # (not a clone's root, whose source folder would be imported)
    assert out.stdout == f"tempbalance {INSTALLED}\n"


# Python started in a folder that holds a source tree (a clone's root): that tree, which has no compiled core, is
# imported instead of the installed package. An editable install's import hook (scikit-build-core's redirecting
# finder) would map `tempbalance` back to its own tree, so the child drops it to see what a regular install sees.
_CHILD = """
import sys
sys.meta_path = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
import tempbalance
print(tempbalance.__file__)
print(tempbalance._native.unavailable_reason)
"""


def _installed_core_folder() -> Path:
    for f in importlib.metadata.distribution("tempbalance").files or []:
        if f.parts[0] == "tempbalance" and f.name.startswith("_core.") and Path(str(f.locate())).exists():
            return Path(str(f.locate())).resolve().parent
    pytest.skip("the installed tempbalance has no compiled core")


def _source_tree(root: Path) -> Path:
    """A copy of the package's Python sources under ``root`` (a clone's root), without the compiled modules."""
    shutil.copytree(Path(tempbalance.__file__).parent, root / "tempbalance",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    return root / "tempbalance"


def test_a_source_tree_that_shadows_the_installed_package_is_named_with_the_fix(tmp_path):
    installed = _installed_core_folder()
    tree = _source_tree(tmp_path)
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.splitlines()
    assert Path(out[0]).resolve().parent == tree.resolve()  # the shadowing really happened
    reason = out[1]
    assert "circular import" not in reason
    assert f"imported from {tree.resolve()}, a source tree without the compiled core, which shadows the installed " \
           f"tempbalance at {installed}" in reason
    assert f"pip install -e {tmp_path.resolve()}" in reason


def test_a_source_tree_with_nothing_installed_says_to_build_it(tmp_path, monkeypatch):
    tree = _source_tree(tmp_path)
    monkeypatch.setattr(_native, "_installed_core_folder", lambda: None)
    reason = _native._why_no_core(ImportError("cannot import name '_core'"), tree)
    assert reason.startswith(f"tempbalance was imported from {tree}, which has no compiled core")
    assert f"pip install -e {tmp_path}" in reason


# --- scripts/check_version.py: what the release workflow checks before it builds ------------------------------------
def _check_version_module():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "check_version.py"
    spec = importlib.util.spec_from_file_location("check_version", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _release_tree(root: Path, version: str, heading: str) -> Path:
    (root / "tempbalance").mkdir(parents=True)
    (root / "tempbalance" / "_version.py").write_text(f'"""doc"""\n__version__ = "{version}"\n')
    (root / "CHANGELOG.md").write_text(f"# Changelog\n\n{heading}\n\ntext\n\n## 0.0.1 - 2020-01-01\n")
    return root


def test_this_trees_version_has_a_changelog_entry():
    cv = _check_version_module()
    assert cv.check(None) == tempbalance.__version__


def test_a_tag_must_equal_the_written_version_and_its_entry_be_dated(tmp_path):
    cv = _check_version_module()
    dated = _release_tree(tmp_path / "a", "1.2.0", "## 1.2.0 - 2026-12-01")
    assert cv.check("v1.2.0", dated) == "1.2.0"
    with pytest.raises(ValueError, match="tag 'v1.2.1' does not match tempbalance/_version.py \\(1.2.0\\)"):
        cv.check("v1.2.1", dated)
    undated = _release_tree(tmp_path / "b", "1.2.0", "## 1.2.0 - unreleased")
    assert cv.check(None, undated) == "1.2.0"  # between releases
    with pytest.raises(ValueError, match="must carry the release date"):
        cv.check("v1.2.0", undated)
    with pytest.raises(ValueError, match="expected one `## 1.3.0 - ...` heading, found 0"):
        cv.check(None, _release_tree(tmp_path / "c", "1.3.0", "## 1.2.0 - 2026-12-01"))
    with pytest.raises(ValueError, match="not a release version"):
        cv.check(None, _release_tree(tmp_path / "d", "1.3.0.dev0", "## 1.3.0.dev0 - unreleased"))
