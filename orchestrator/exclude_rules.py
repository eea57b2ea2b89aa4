"""A spec's ``exclude`` rules, matched in bounded work: grouped by the axes they name, so a trial
costs one set lookup per group however many rules there are."""

from __future__ import annotations

import json
from typing import Any


def _canonical(value: Any) -> str:
    """A text equal for values that compare equal (1, 1.0 and True as Python's ``==`` has them)."""
    def plain(v: Any) -> Any:
        if isinstance(v, bool | int | float):
            return float(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v
    return json.dumps(plain(value), sort_keys=True, default=str)


class RuleIndex:
    """Rules (``exclude``) grouped by the axes they name: a trial is checked with one set lookup per
    group, so thousands of rules over thousands of trials cost seconds, not their product."""

    def __init__(self, rules: list[dict[str, Any]]) -> None:
        self.groups: dict[tuple[str, ...], set[str]] = {}
        for rule in rules:
            keys = tuple(sorted(rule))
            self.groups.setdefault(keys, set()).add(_canonical([rule[k] for k in keys]))

    def matches(self, axes: dict[str, Any]) -> bool:
        """True when some rule names only axes the trial has, each with the trial's value."""
        return any(all(k in axes for k in keys) and _canonical([axes[k] for k in keys]) in values
                   for keys, values in self.groups.items())
