"""The project's user-error types: bad input whose message says what is wrong and how to fix it.

Each is also the matching built-in (``ValueError``, ``TypeError``, ``FileNotFoundError``, ``OSError``), so callers
that catch those keep working. The ``patnet`` command prints a :class:`UserError` as one line and
exits 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class InvalidValueError(UserError, ValueError):
    """A value (argument, flag, file content, tensor shape) that cannot be used."""


class InvalidTypeError(UserError, TypeError):
    """An argument of the wrong type (e.g. an integer image tensor)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class UnwritablePathError(UserError, OSError):
    """A path that cannot be written: full disk, read-only or foreign folder, a file where a folder should be."""
