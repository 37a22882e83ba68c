"""The package version: the one place it is written.

The build backend reads it from here (pyproject.toml: scikit-build-core's regex metadata provider), so the wheel's
metadata, ``tempbalance.__version__`` and ``tempbalance --version`` always agree; a release tag must match it
(scripts/check_version.py, run by the release workflow).
"""
__version__ = "0.1.0"
