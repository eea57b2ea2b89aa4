"""Checkpoints and tensor files, written atomically (:mod:`mgas_core.files.atomic`).

Checkpoints are ``torch.save`` payloads loaded with ``weights_only=True`` (no pickled code),
preceded in the same file by their SHA-256, so truncation or tampering is detected before
loading. Weight masks use safetensors.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from mgas_common.errors import UserInputError
from mgas_core.files.atomic import atomic_write_bytes

CHECKPOINT_MAGIC = b"MGAS-CHECKPOINT-V1\n"  # then 32 bytes of SHA-256, then the torch.save payload
PREVIOUS_SUFFIX = ".prev"


class CorruptFileError(UserInputError):
    """A file that exists but fails its checksum or cannot be decoded (named in the message)."""


def save_tensor_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    return atomic_write_bytes(path, data)


def load_tensor_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CorruptFileError(f"{path}: not a readable safetensors file ({exc})") from exc


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically write ``state`` (tensors and plain Python values only) as one self-checking
    file: a magic line, the SHA-256 of the payload, then the ``torch.save`` payload."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    return atomic_write_bytes(path, CHECKPOINT_MAGIC + hashlib.sha256(data).digest() + data)


def save_checkpoint_keeping_previous(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """:func:`save_checkpoint`, first moving the current file aside to ``<path>.prev`` (one atomic
    rename), so at every instant a complete checkpoint exists under one of the two names."""
    path = Path(path)
    if path.exists():
        os.replace(path, path.with_name(path.name + PREVIOUS_SUFFIX))
    return save_checkpoint(state, path)


def load_first_good(paths: list[Path]) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The first of ``paths`` that exists and loads; also every problem met on the way."""
    problems: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        try:
            return load_checkpoint(path), path, problems
        except (CorruptFileError, OSError) as exc:
            problems.append(str(exc))
    return None, None, problems


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (checksum verified) or a plain
    ``torch.save`` file; tensors and plain values only (``weights_only=True``). Raises
    :class:`CorruptFileError` for a truncated, modified or unsafe file."""
    path = Path(path)
    return load_checkpoint_bytes(path.read_bytes(), str(path), map_location)


def load_checkpoint_bytes(data: bytes, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """:func:`load_checkpoint` of a file's bytes (read from any filesystem); ``name`` for messages."""
    if data.startswith(CHECKPOINT_MAGIC):
        digest, data = data[len(CHECKPOINT_MAGIC): len(CHECKPOINT_MAGIC) + 32], data[len(CHECKPOINT_MAGIC) + 32:]
        if hashlib.sha256(data).digest() != digest:
            raise CorruptFileError(f"{name}: checksum mismatch (truncated or modified)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types on a damaged file
        raise CorruptFileError(f"{name}: cannot be loaded safely ({type(exc).__name__}: {exc})") from exc
