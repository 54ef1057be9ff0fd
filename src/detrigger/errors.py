"""The one user-facing error type: the CLI prints its message on one line and exits with code 2."""


class DetriggerError(Exception):
    """Bad input (file, column, line, key, checkpoint) that the user can fix; never a bug."""
