"""The one user-facing error type: the CLI prints its message on one line and exits with code 2."""

from __future__ import annotations


class DetriggerError(Exception):
    """Bad input (file, column, line, key, checkpoint) that the user can fix; never a bug."""


def invalid(exc: Exception, hidden: tuple[str, ...] = ()) -> str:
    """One line for a pydantic ValidationError: `key.path: message` of its first error (+ how many more);
    `hidden` names internal loc parts left out of the key path. Any other error: its text on one line."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return " ".join(str(exc).split())
    first, *rest = errors()
    key = ".".join(str(part) for part in first["loc"] if str(part) not in hidden)
    more = f" (and {len(rest)} more)" if rest else ""
    message = first["msg"].removeprefix("Value error, ")  # a whole-model check names its own key
    return f"{key}: {message}{more}" if key else f"{message}{more}"
