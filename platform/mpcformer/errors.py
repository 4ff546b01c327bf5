"""Errors the user can fix. The CLI prints their message on one line and exits with status 2."""

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input (argument, config, path, data): the message names the problem and the fix."""
