"""Errors caused by the user's input (reported as one line, exit code 2) versus bugs (tracebacks)."""

from __future__ import annotations

from pydantic import ValidationError


class UserInputError(ValueError):
    """Bad input: a setting, a file or a dataset the user pointed at. The message names the field."""


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per pydantic error, joined: ``field.path: message (got value)``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "settings")
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)
