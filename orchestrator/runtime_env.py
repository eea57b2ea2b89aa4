"""A sweep's Ray runtime environment (``runtime:`` in a spec, or ``mgas run --runtime-env FILE``):
the code and its requirements on every node, checked before Ray starts so that a worker never
dies at start on it (its trial would wait forever)."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from mgas_common.errors import UserInputError, format_validation_error
from mgas_common.safe_yaml import load_yaml
from mgas_common.user_files import read_input_text
from mgas_core.settings.strict import PATH_TEXT, Strict

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")


class RuntimeSpec(Strict):
    """Ray's runtime environment for every task of the sweep: the code and its requirements on
    every node. ``working_dir`` is relative to the file that names it."""

    working_dir: str | None = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT)
    pip: list[str] = Field([], max_length=1000)
    env_vars: dict[str, str | int | float | bool] = {}  # values become strings
    excludes: list[str] = Field([], max_length=1000)

    @field_validator("env_vars")
    @classmethod
    def _env_names(cls, v: dict[str, Any]) -> dict[str, Any]:
        """A name the environment can hold (a worker given ``A=B`` or a NUL dies before it starts,
        and the trial waits forever); no NUL in a value either."""
        for name, value in v.items():
            if not ENV_NAME.match(name):
                raise ValueError(f"env_vars name {name[:60]!r}: letters, digits and _ only, not starting with a digit")
            if "\x00" in str(value):
                raise ValueError(f"env_vars {name}: the value holds a NUL character")
        return v

    @field_validator("pip")
    @classmethod
    def _requirements(cls, v: list[str]) -> list[str]:
        """Each entry a requirement pip understands (``torch>=2.4``, ``name @ URL``) or a path or URL
        of a package; anything else would fail on every node only once the workers start."""
        from packaging.requirements import InvalidRequirement, Requirement

        for entry in v:
            if re.match(r"^(\.{0,2}/|[a-z+]+://)", entry) and "\x00" not in entry:
                continue
            try:
                Requirement(entry)
            except InvalidRequirement as exc:
                reason = str(exc).splitlines()[0][:120]
                raise ValueError(f"pip entry {entry[:80]!r} is not a requirement ({reason})") from None
        return v

    def to_ray(self, base: Path) -> dict[str, Any]:
        env: dict[str, Any] = {}
        if self.working_dir is not None:
            folder = Path(os.path.expanduser(self.working_dir))
            folder = folder if folder.is_absolute() else (base / folder).resolve()
            if not folder.is_dir():
                raise UserInputError(f"runtime.working_dir {folder} is not a folder")
            check_readable(folder, list(self.excludes or []))
            env["working_dir"] = str(folder)
        if self.pip:
            env["pip"] = list(self.pip)
        if self.env_vars:
            env["env_vars"] = {str(k): str(v) for k, v in self.env_vars.items()}
        if self.excludes:
            env["excludes"] = list(self.excludes)
        return env


def check_readable(folder: Path, excludes: list[str]) -> None:
    """Every file and folder Ray will pack from ``working_dir`` must be readable by this user; Ray
    would stop with a traceback halfway through packing it. Skipped, as Ray skips them (gitignore
    patterns): ``excludes`` and, unless ``RAY_RUNTIME_ENV_IGNORE_GITIGNORE`` is set, the folder's
    top-level ``.gitignore`` (a checkout's ``.venv`` is not walked)."""
    import pathspec

    patterns = list(excludes)
    gitignore = folder / ".gitignore"
    if not os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE") and gitignore.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            patterns += gitignore.read_text().splitlines()
    skip = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    for root, dirs, files in os.walk(folder, onerror=None):
        base = Path(root)
        for name in [*dirs, *files]:
            path = base / name
            relative = path.relative_to(folder).as_posix() + ("/" if name in dirs else "")
            if skip.match_file(relative):
                if name in dirs:
                    dirs.remove(name)
                continue
            wanted = os.R_OK | (os.X_OK if name in dirs else 0)
            if not path.is_symlink() and not os.access(path, wanted):
                raise UserInputError(f"runtime.working_dir: {path} cannot be read by this user, and Ray packs every "
                                     "file of the folder; make it readable or leave it out with runtime.excludes")


def load_runtime_env(path: str | Path) -> dict[str, Any]:
    """``mgas run --runtime-env FILE``: a YAML/JSON file with the keys of the spec's ``runtime``."""
    path = Path(path)
    raw = load_yaml(read_input_text(path, "runtime env file"), f"runtime env file {path}")
    try:
        runtime = RuntimeSpec.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        raise UserInputError(f"{path.name}: {format_validation_error(exc)}") from exc
    return runtime.to_ray(path.resolve().parent)
