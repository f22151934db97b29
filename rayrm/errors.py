"""Errors that mean the user's input is wrong, not that rayrm is.

The CLI prints a `UserError` as one line (`rayrm: error: ...`) and exits with code 2; any other exception is an
internal failure and keeps its traceback. A `UserError` raised inside a Ray task or actor still counts: the CLI
looks through Ray's wrappers for it. This module imports nothing, so every layer can raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a config key or value, a data row, a path that does not exist. The message names what to fix."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file, directory, model or export the user named is not there."""
