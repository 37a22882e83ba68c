"""The error every ``tempbalance`` subcommand raises for a user's mistake (its own module, so the subcommands and
the command registry in :mod:`tempbalance.cli` import it without importing each other)."""
from __future__ import annotations


class CliError(Exception):
    """A user-facing error: printed as one line without a traceback, exit code 1."""
