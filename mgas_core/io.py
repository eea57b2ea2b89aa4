"""Safe, atomic file I/O: every write goes to a temp file in the same folder, then ``os.replace``.

Checkpoints are ``torch.save`` files loaded with ``weights_only=True`` (no pickled code) and
carry a SHA-256 sidecar so truncation or tampering is detected before loading. Weight masks use
safetensors.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

CHECKSUM_SUFFIX = ".sha256"


class CorruptFileError(RuntimeError):
    """A file that exists but fails its checksum or cannot be decoded."""


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_tensor_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    return atomic_write_bytes(path, data)


def load_tensor_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CorruptFileError(f"{path}: not a readable safetensors file ({exc})") from exc


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically write ``state`` (tensors and plain Python values only) with a checksum sidecar."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    path = Path(path)
    digest = hashlib.sha256(data).hexdigest()
    # the sidecar names the digest of the data file; write data first so a crash between the two
    # leaves a mismatch (detected) rather than a silently wrong pair
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_name(path.name + CHECKSUM_SUFFIX), digest + "\n")
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; raise :class:`CorruptFileError` if bad."""
    path = Path(path)
    data = path.read_bytes()
    sidecar = path.with_name(path.name + CHECKSUM_SUFFIX)
    if sidecar.exists():
        expected = sidecar.read_text().strip()
        if hashlib.sha256(data).hexdigest() != expected:
            raise CorruptFileError(f"{path}: checksum mismatch (truncated or modified)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types on a damaged file
        raise CorruptFileError(f"{path}: cannot be loaded safely ({type(exc).__name__}: {exc})") from exc
