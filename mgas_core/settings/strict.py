"""The strict base of every settings model, the numeric bounds, and located validation errors.

Every settings model derives from :class:`Strict`: unknown keys refused, numbers finite and
bounded, no boolean where a number belongs, so a typo names the offending field.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_INT = 1_000_000
"""Magnitude bound of any integer setting that declares no upper bound of its own."""
MAX_FLOAT = 1e12
"""Magnitude bound of any float setting that declares no upper bound of its own."""
MAX_EPOCHS = 100_000
MAX_SEED = 2**32 - 1

MAX_LAYERS = 100
MAX_CHANNELS = 2048
MAX_NODES = 16
MAX_BATCH = 65_536
MAX_TARGET_M = 100_000.0
PATH_TEXT = r"^[^\x00]*$"
"""The pattern of a path or any text handed to the OS: no NUL character."""


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types a field annotation admits (``int | None`` -> {int, NoneType})."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    if origin is Literal:
        return {type(a) for a in typing.get_args(annotation)}
    if origin is Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    return {annotation} if isinstance(annotation, type) else set()


def _has_upper_bound(metadata: list[Any]) -> bool:
    return any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in metadata)


class Strict(BaseModel):
    """Base of every settings model: unknown keys refused, every float finite, no boolean where a
    number belongs (``epochs: true``), and every number that declares no upper bound of its own
    bounded by :data:`MAX_INT` / :data:`MAX_FLOAT`, so a typo cannot start a run that never ends."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        kinds = _scalar_kinds(field.annotation)
        numeric = kinds & {int, float}
        if isinstance(value, bool) and numeric and bool not in kinds:
            raise ValueError("expected a number, not a boolean")
        if numeric and isinstance(value, int | float) and not isinstance(value, bool) \
                and not _has_upper_bound(field.metadata):
            limit = MAX_FLOAT if float in numeric else MAX_INT
            if math.isfinite(value) and abs(value) > limit:
                raise ValueError(f"must be between {-limit:g} and {limit:g}, got {value:g}")
        return value


class SettingConflict(ValueError):
    """Settings that are each valid but cannot run together; ``field`` is the dotted path (below
    ``search.`` when raised by a method's :meth:`~mgas_core.methods.protocol.SearchMethod.check_settings`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def field_error(field: str, message: str, value: Any, model: str = "settings") -> ValidationError:
    """A validation error located at the dotted ``field`` (raised from model validators, so the
    one-line message names the field rather than the whole model)."""
    loc = tuple(int(p) if p.isdigit() else p for p in field.split("."))
    detail = InitErrorDetails(type=PydanticCustomError("setting_conflict", "{message}", {"message": message}),
                              loc=loc, input=value)
    return ValidationError.from_exception_data(model, [detail])


