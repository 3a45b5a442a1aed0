"""Errors that are the user's to fix: CLIs print them as one line and exit non-zero, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, bad configuration or a missing resource, described in words a user can act on."""

    exit_code = 2


class VerificationError(UserError):
    """An artifact failed its hash or signature check."""

    exit_code = 3
