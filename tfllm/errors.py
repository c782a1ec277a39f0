"""User-facing errors: raised for bad input, printed by the CLIs as one line with a non-zero exit."""
from __future__ import annotations


class TfllmError(Exception):
    """An input or configuration problem the user can fix; the message names the file/row/key."""

    exit_code = 2


class Interrupted(TfllmError):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume.

    ``exit_code`` follows the shell's convention, 128 + the signal number (130 Ctrl-C, 143 SIGTERM).
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(error: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (its type name if empty), for one-line errors."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line[:limit] if limit else line
