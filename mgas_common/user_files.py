"""Files and folders the user names: checked before anything is read or written, errors name the path.

Every check raises :class:`~mgas_common.errors.UserInputError` (one line, exit code 2); input files
are read whole with a size limit, so a wrong path (a disk image, ``/dev/zero``) cannot hang a
command or exhaust its memory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from mgas_common.errors import UserInputError

MAX_INPUT_BYTES = 4 * 2**20
"""Experiment specs, architecture JSON and published-number files are small; 4 MiB is plenty."""


def path_exists(path: Path) -> bool:
    """``path.exists()`` that treats a name the system cannot even look up (too long, a NUL) as absent."""
    try:
        return "\x00" not in str(path) and path.exists()
    except OSError:
        return False


def check_readable_file(path: Path, what: str) -> Path:
    """``path`` if it is a readable regular file; else a :class:`UserInputError` naming it."""
    try:
        return _check_readable_file(path, what)
    except OSError as exc:  # a name the system refuses (too long, a loop of links ...)
        raise UserInputError(f"{what} {path}: {exc.strerror or exc}") from None


def _check_readable_file(path: Path, what: str) -> Path:
    if "\x00" in str(path):
        raise UserInputError(f"{what} path contains a NUL character")
    if not path.exists():
        raise UserInputError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UserInputError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise UserInputError(f"{what} {path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise UserInputError(f"{what} {path} is not readable (permission denied)")
    return path


def read_input_bytes(path: Path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> bytes:
    """The bytes of a small input file (at most ``max_bytes``), checked first."""
    check_readable_file(path, what)
    size = path.stat().st_size
    if size > max_bytes:
        raise UserInputError(f"{what} {path} is {size / 2**20:.1f} MiB; at most {max_bytes / 2**20:.0f} MiB allowed")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc


def read_input_text(path: Path, what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    data = read_input_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from exc


URI_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
"""A scheme (``s3:/``, ``gs:/``, ``file:/``) at the start of a path: a URI, once ``Path`` has
folded its double slash."""


def _name_max(path: Path) -> int:
    """The longest file name (bytes) the filesystem holding ``path`` (or its nearest existing
    parent) allows; 255 where it does not say."""
    probe = path.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_output_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder that exists or can be created and written; else a
    :class:`UserInputError` naming it (checked before anything is written)."""
    try:
        return _check_output_dir(path, what)
    except OSError as exc:
        raise UserInputError(f"{what} {path}: {exc.strerror or exc}") from None


def _check_output_dir(path: Path, what: str) -> Path:
    if "\x00" in str(path):
        raise UserInputError(f"{what} path contains a NUL character")
    if URI_LIKE.match(str(path)):  # Path("s3://b/x") is "s3:/b/x": never a local folder named "s3:"
        raise UserInputError(f"{what} {path}: this command writes to a local folder, not to a URI; give a path "
                             "(object stores: `mgas run --out s3://...`)")
    limit = _name_max(path)
    long = next((part for part in path.parts if len(os.fsencode(part)) > limit), None)
    if long is not None:
        raise UserInputError(f"{what} {path}: the name {long[:40]}... is {len(os.fsencode(long))} bytes; at most "
                             f"{limit} on this filesystem")
    if path.is_symlink() and not path.exists():
        raise UserInputError(f"{what} {path} is a broken symlink or a symlink loop")
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{what} {path} is a file; expected a folder")
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UserInputError(f"{what} {path} cannot be created: {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserInputError(f"{what} {path} cannot be written: {probe} is not writable (permission denied)")
    return path


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise UserInputError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _refuse_constant(name: str) -> Any:
    raise UserInputError(f"{name} is not a number JSON allows")


def load_json(text: str, where: str) -> Any:
    """Strict JSON: duplicate keys and NaN/Infinity refused; errors are one line naming ``where``."""
    try:
        return json.loads(text, object_pairs_hook=_refuse_duplicates, parse_constant=_refuse_constant)
    except UserInputError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{where} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise UserInputError(f"{where} is nested too deeply to be read") from None
