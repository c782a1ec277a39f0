"""User-facing errors: raised for bad input, printed by the CLIs as one line with a non-zero exit."""


class TfllmError(Exception):
    """An input or configuration problem the user can fix; the message names the file/row/key."""
