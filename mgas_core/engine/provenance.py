"""What a run records about where it came from: git revision, library versions, host."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "ray", "numpy", "pandas", "pyarrow", "pydantic", "scikit-learn")


@lru_cache(maxsize=1)
def git_revision() -> str:
    """The commit of the source tree this package was imported from (``+dirty`` if modified); for a
    copy without ``.git`` (a Ray ``working_dir`` upload) the ``MGAS_GIT_SHA`` environment variable."""
    root = Path(__file__).resolve().parents[2]  # the tree holding mgas_core/engine/provenance.py
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("MGAS_GIT_SHA", "unknown")
    return sha + ("+dirty" if dirty else "")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def provenance() -> dict[str, object]:
    return {"git_sha": git_revision(), "versions": library_versions(), "host": platform.node()}
