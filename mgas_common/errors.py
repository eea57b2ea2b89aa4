"""Errors caused by the user's input (reported as one line, exit code 2) versus bugs (tracebacks).

Only :class:`UserInputError` and its subclasses become ``mgas: error: ...`` with exit code 2;
anything else is a bug and keeps its traceback. Code that reads user input (settings, specs,
architecture files, checkpoints, result folders) turns what is wrong with it into one of these,
naming the field or the path."""

from __future__ import annotations

from pydantic import ValidationError


class UserInputError(ValueError):
    """Bad input: a setting, a file or a dataset the user pointed at. The message names the field."""


def format_validation_error(exc: ValidationError, prefix: str = "", names: dict[str, str] | None = None) -> str:
    """One part per pydantic error, joined: ``field.path: message (got value)``; ``names`` maps a
    dotted path to how the user spelled it (``search.epochs`` -> ``--epochs``)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        where = f"{prefix}{loc}" if loc else (prefix.rstrip(".") or "settings")
        if names and loc in names:
            where = f"{where} ({names[loc]})"
        got = err.get("input")
        message = err["msg"].removeprefix("Value error, ")
        quiet = isinstance(got, dict) or err["type"] in ("missing", "setting_conflict") or "got " in message
        shown = "" if quiet else f" (got {_short(got)})"
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) folded into one space."""
    return " ".join(str(text).split())
