"""The method registry: which methods exist, and the settings, presets and flags they make up.

Every module of ``mgas_core.methods`` is imported with the package (its ``__init__``), so a method
placed there is registered by its ``@register_method`` decorator; methods of other installed
packages are found through the ``mgas.methods`` entry-point group. The registry is the one source
of method names: the run settings (each method's group under ``search.<name>``), the presets
(the shared part plus each method's values), the command-line flags, the result columns, the
report's styles, the experiment specs and the benchmarks all read it.
"""

from __future__ import annotations

import importlib
import re
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field, SerializeAsAny, create_model, field_validator, model_validator

from mgas_common.errors import UserInputError
from mgas_core.data import DatasetInfo, SearchAugment
from mgas_core.methods.protocol import MethodStyle, SearchMethod
from mgas_core.settings.presets import SHARED_PRESETS, model_paths, nested_overrides
from mgas_core.settings.run import RunSettings, SearchSettings
from mgas_core.settings.strict import SettingConflict, field_error

METHOD_REGISTRY: dict[str, type[SearchMethod]] = {}
ENTRY_POINT_GROUP = "mgas.methods"
METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_entry_points_loaded: list[bool] = []


def register_method(name: str) -> Callable[[type[SearchMethod]], type[SearchMethod]]:
    """Class decorator: make ``name`` a search method (``search.method: name``)."""
    def wrap(cls: type[SearchMethod]) -> type[SearchMethod]:
        if not METHOD_NAME.match(name):
            raise ValueError(f"method name {name!r} must be lower-case letters, digits and _ (a settings key)")
        if name in SearchSettings.model_fields:
            raise ValueError(f"method name {name!r} is taken by the search setting of that name")
        _check_declarations(name, cls)
        known = METHOD_REGISTRY.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"method {name!r} registered twice ({known.__module__} and {cls.__module__})")
        cls.name = name
        METHOD_REGISTRY[name] = cls
        return cls

    return wrap


def unregister_method(name: str) -> None:
    """Remove a registered method (tests that register a throwaway one clean up with this)."""
    METHOD_REGISTRY.pop(name, None)


def load_methods() -> dict[str, type[SearchMethod]]:
    """The registry with every built-in method (all modules of ``mgas_core.methods``) and those
    that installed packages declare in the ``mgas.methods`` entry-point group."""
    if not _entry_points_loaded:
        _entry_points_loaded.append(True)
        from importlib.metadata import entry_points

        for entry in entry_points(group=ENTRY_POINT_GROUP):
            entry.load()
    return METHOD_REGISTRY


def method_names(searching_only: bool = False) -> tuple[str, ...]:
    """Every registered method; ``searching_only``: those with a search step (benchmarks)."""
    return tuple(name for name, m in load_methods().items() if m.searches or not searching_only)


def result_columns() -> dict[str, type]:
    """Result columns the registered methods declare (``result_fields``), each with the scalar
    type it is stored as: int, float, bool, or str (lists are joined with commas)."""
    columns: dict[str, type] = {}
    for name, method in load_methods().items():
        for field in method.result_fields:
            if method.settings_model is None or field not in method.settings_model.model_fields:
                raise ValueError(f"method {name!r} declares result field {field!r}, which its settings lack")
            annotation = method.settings_model.model_fields[field].annotation
            kind = next((k for k in (bool, int, float) if annotation is k or annotation == k | None), str)
            if columns.setdefault(field, kind) is not kind:
                raise ValueError(f"result column {field!r} is declared as {columns[field].__name__} and "
                                 f"{kind.__name__} by two methods")
    return columns


def result_values(settings: dict[str, Any]) -> dict[str, Any]:
    """The declared result columns of one run (``settings`` as dumped to JSON): the method's own
    values, None for columns other methods declare."""
    columns = dict.fromkeys(result_columns())
    name = settings["search"]["method"]
    for field in get_method(name).result_fields:
        value = settings["search"][name][field]
        columns[field] = ",".join(map(str, value)) if isinstance(value, list | tuple) else value
    return columns


def get_method(name: str, module: str | None = None) -> type[SearchMethod]:
    """The class registered as ``name``; ``module`` (where it was registered, recorded with each
    trial) is imported first if the name is not known in this process yet (a Ray worker)."""
    registry = load_methods()
    if name not in registry and module:
        importlib.import_module(module)
    if name not in registry:
        raise UserInputError(f"unknown method {name!r}; allowed: {', '.join(registry)}")
    return registry[name]


def create_method(settings: SearchSettings, info: DatasetInfo, device: torch.device, seed: int) -> SearchMethod:
    method = get_method(settings.method)(settings, info, device, seed)
    method.model.to(memory_format=method.memory_format)
    return method


def search_augment_for(settings: SearchSettings) -> SearchAugment:
    """The search-time augmentation of ``settings.method`` (see :meth:`SearchMethod.search_augment`)."""
    cls = load_methods().get(settings.method)
    return cls.search_augment(settings) if cls is not None else SearchAugment()


def _check_declarations(name: str, cls: type[SearchMethod]) -> None:
    """A method's presets and benchmark settings stay inside its own group, and its flags name
    fields of that group."""
    fields = cls.settings_model.model_fields if cls.settings_model is not None else {}
    declared = [(f"preset {preset!r}", values) for preset, values in cls.presets.items()]
    for where, values in [*declared, ("benchmark_overrides", cls.benchmark_overrides)]:
        for path in values:
            if not path.startswith(f"search.{name}."):
                raise ValueError(f"method {name!r}: {where} sets {path!r}, outside search.{name}.*")
    for field in cls.cli_flags:
        if field not in fields:
            raise ValueError(f"method {name!r} offers flag --{field.replace('_', '-')} for {field!r}, which its "
                             "settings lack")


# --- the settings of a run, with every registered method's group --------------------------------


class RegisteredSearchSettings(SearchSettings):
    """The shared search settings checked against the registry: the method is a registered one, and
    the combinations it cannot run are refused (before anything is written or started)."""

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        names = method_names()
        if v not in names:
            raise ValueError(f"unknown method {v!r}; allowed: {', '.join(names)}")
        return v

    @model_validator(mode="after")
    def _runnable(self) -> RegisteredSearchSettings:
        method = METHOD_REGISTRY[self.method]
        try:
            if self.impl == "reference" and not method.reference_impl:
                allowed = [n for n, m in METHOD_REGISTRY.items() if m.reference_impl]
                raise SettingConflict("impl", f"impl 'reference' exists for {', '.join(allowed)}, not for "
                                              f"{self.method!r}; allowed for {self.method}: fast")
            if self.latency.predictor is not None and not method.takes_latency_cost:
                allowed = [n for n, m in METHOD_REGISTRY.items() if m.takes_latency_cost]
                raise SettingConflict("latency.predictor", f"method {self.method!r} cannot take a latency cost yet; "
                                                           f"the methods that can: {', '.join(allowed)}")
            if self.checkpoint_cells and self.impl == "reference":
                raise SettingConflict("checkpoint_cells", "checkpoint_cells needs impl fast (the reference "
                                                          "supernet mirrors the official code)")
            method.check_settings(self)
        except SettingConflict as exc:
            value: Any = self
            for part in exc.field.split("."):
                value = getattr(value, part, None)
            raise field_error(exc.field, str(exc), value, type(self).__name__) from None
        return self


@cache
def _composed_models(groups: tuple[tuple[str, type[BaseModel]], ...]) -> tuple[type[SearchSettings],
                                                                               type[RunSettings]]:
    fields: dict[str, Any] = {name: (model, Field(default_factory=model)) for name, model in groups}
    search = create_model("SearchSettings", __base__=RegisteredSearchSettings, __module__=__name__, **fields)
    run = create_model("RunSettings", __base__=RunSettings, __module__=__name__,
                       search=(SerializeAsAny[search], Field(default_factory=search)))
    return search, run


def _groups() -> tuple[tuple[str, type[BaseModel]], ...]:
    return tuple((name, m.settings_model) for name, m in load_methods().items() if m.settings_model is not None)


def search_settings_model() -> type[SearchSettings]:
    """:class:`SearchSettings` with one field per registered method that has its own settings."""
    return _composed_models(_groups())[0]


def run_settings_model() -> type[RunSettings]:
    """:class:`RunSettings` whose ``search`` is :func:`search_settings_model`."""
    return _composed_models(_groups())[1]


def validate_settings(data: Any) -> RunSettings:
    """Run settings from a nested dict (a resolved config as dumped to JSON, a trial's settings)."""
    return run_settings_model().model_validate(data)


def presets() -> dict[str, dict[str, Any]]:
    """Every preset: the shared part (:data:`~mgas_core.settings.presets.SHARED_PRESETS`) plus each
    registered method's values for it; a method may add a preset of its own name."""
    merged = {name: dict(values) for name, values in SHARED_PRESETS.items()}
    for method in load_methods().values():
        for name, values in method.presets.items():
            merged.setdefault(name, {}).update(values)
    return merged


def preset_names() -> tuple[str, ...]:
    return tuple(presets())


def known_paths() -> list[str]:
    """Every dotted settings path of a run, registered methods' groups included."""
    return model_paths(run_settings_model())


def build_settings(preset: str = "paper", overrides: dict[str, Any] | None = None) -> RunSettings:
    """Run settings from a preset plus dotted-path overrides (later wins)."""
    return validate_settings(nested_overrides(presets(), preset, overrides))


# --- the command line and the reports, as the methods declare them ------------------------------


def _flag_type(annotation: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """The value type and choices of a settings field's flag (``list`` for a list field)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        origin = typing.get_origin(annotation)
    if origin is list:
        return list, None
    if origin is Literal:
        choices = typing.get_args(annotation)
        return type(choices[0]), choices
    return (annotation if annotation in (int, float, str) else str), None


def method_flags() -> dict[str, tuple[str, Any, tuple[Any, ...] | None, str]]:
    """The flags the registered methods offer: argparse dest -> (settings path, type, choices,
    help). Two methods offering a flag of the same name is a registration error."""
    flags: dict[str, tuple[str, Any, tuple[Any, ...] | None, str]] = {}
    for name, method in load_methods().items():
        if method.settings_model is None:
            continue
        label = method.style.label if method.style is not None else name
        for field, help_text in method.cli_flags.items():
            if field in flags or field in SearchSettings.model_fields:
                raise ValueError(f"flag --{field.replace('_', '-')} of method {name!r} is taken "
                                 f"({flags[field][0] if field in flags else 'a shared search setting'})")
            info = method.settings_model.model_fields[field]
            kind, choices = _flag_type(info.annotation)
            default = info.get_default(call_default_factory=True)
            allowed = f"one of {', '.join(map(str, choices))}; " if choices else ""
            help_line = f"{label}: {help_text} ({allowed}default {default})"
            flags[field] = (f"search.{name}.{field}", kind, choices, help_line)
    return flags


def method_styles() -> dict[str, MethodStyle]:
    """Each registered method's report style (methods that declare none are left out: the report
    gives them a palette colour and their name)."""
    return {name: m.style for name, m in load_methods().items() if m.style is not None}
