"""Published architectures as reference rows: no search, the named architecture retrained under
the trial's protocol (``search.method: published``).

A researcher reproducing a table first retrains the published architectures under their own
protocol, then compares searches with them. ``search.published.arch`` names one: a built-in
(``darts_v1``, ``darts_v2``) or an architecture JSON, such as ``mgas import-arch`` writes from the
official MG-DARTS, GOLD-NAS and DARTS files (with its weight masks where the JSON names them). A
relative path is read from the folder ``mgas`` runs in (the trial's node resolves it the same
way, as the data root). The trial's search runs no epoch; its row is the retrained architecture,
``method`` = ``published``, which the report draws and lists as a reference.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field

from mgas_common.errors import UserInputError
from mgas_core.methods.protocol import MethodStyle, RetrainOnlyMethod
from mgas_core.methods.registry import register_method
from mgas_core.settings.run import SearchSettings
from mgas_core.settings.strict import PATH_TEXT, Strict
from mgas_core.space.architecture import Architecture
from mgas_core.space.builtin_architectures import BUILTIN_ARCHITECTURES, resolve_architecture
from mgas_core.space.topology import NO_NONE_PRIMITIVES


class PublishedSettings(Strict):
    arch: str | None = Field(None, min_length=1, max_length=4096, pattern=PATH_TEXT,
                             description="the published architecture to retrain: darts_v1, darts_v2 or an "
                                         "architecture JSON (mgas import-arch writes one)")


def located(name_or_path: str) -> str:
    """A built-in name as it is; a relative path from the folder ``mgas`` runs in (a trial's node:
    the driver's folder, ``TUNE_ORIG_WORKING_DIR``)."""
    if name_or_path.lower() in BUILTIN_ARCHITECTURES:
        return name_or_path
    path = Path(name_or_path).expanduser()
    base = Path(os.environ.get("TUNE_ORIG_WORKING_DIR") or os.getcwd())
    return str(path if path.is_absolute() else base / path)


def published_architecture(settings: SearchSettings) -> Architecture:
    """The architecture ``search.published.arch`` names, read and checked (one-line errors)."""
    if settings.published.arch is None:
        raise UserInputError("search.published.arch is required with search.method published: darts_v1, darts_v2 "
                             "or an architecture JSON")
    return resolve_architecture(located(settings.published.arch))


@register_method("published")
class Published(RetrainOnlyMethod):
    primitives = NO_NONE_PRIMITIVES
    settings_model = PublishedSettings
    architecture_field = "published.arch"
    style = MethodStyle("Published (retrained here)", "#4d4d4d", "*")

    @classmethod
    def architecture(cls, settings: SearchSettings) -> Architecture:
        if settings.published.arch is None:
            raise UserInputError("required with search.method published: darts_v1, darts_v2 or an architecture "
                                 "JSON (mgas import-arch writes one)")
        return published_architecture(settings)

    @classmethod
    def epoch_plan(cls, settings: SearchSettings) -> tuple[int, str]:
        return 0, "no search (retrains search.published.arch)"

    def derive(self) -> Architecture:
        arch = super().derive()
        arch.meta.update({"reference": True, "published_arch": self.settings.published.arch})
        return arch

    def summary(self) -> dict[str, Any]:
        return {"published_arch": self.settings.published.arch, "arch_name": self.arch.name}
