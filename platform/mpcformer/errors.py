"""Errors the user can fix (the CLI prints their message on one line and exits with status 2), and
the stop a SIGTERM asks for."""

__all__ = ["UserError", "PartyFailure", "Terminated"]


class UserError(Exception):
    """Bad input (argument, config, path, data): the message names the problem and the fix."""


class PartyFailure(RuntimeError):
    """A party or the dealer failed, stalled or missed a deadline, under either launcher (local
    processes or Ray actors): ``who`` names it and the first line of the message says why. The CLI
    prints that line and exits 1."""

    def __init__(self, who: str, message: str, text: str | None = None):
        super().__init__(text or f"{who} failed: {message}")
        self.who = who
        self.message = message


class Terminated(KeyboardInterrupt):
    """SIGTERM (Kubernetes, systemd, ``ray job stop``): stop as Ctrl-C does; the CLI exits 143."""
