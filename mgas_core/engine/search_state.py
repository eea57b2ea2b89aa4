"""The file a resumable single-process search keeps (``checkpoint.pt``) and its checks.

The file holds ``{"format", "version", "settings", "search"}``: ``search`` is the state
:func:`mgas_core.engine.search.run_search` hands to its epoch callback, ``settings`` the run's resolved
settings. Before a search resumes from a file, :func:`check_search_checkpoint` verifies its
structure (every key, type and count the loop relies on) and that it was written by a search
with the same settings (only ``search.epochs`` may grow, and where it runs may change); what is
wrong is named in one line.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mgas_common.errors import UserInputError
from mgas_core.settings.run import RunSettings

FORMAT = "mgas-search-checkpoint"
VERSION = 1
MAX_RNG_REPR = 100_000
FREE_TO_CHANGE = {"search.epochs", "device", "threads", "data.root", "data.download", "data.workers"}
"""Settings a resumed search may change: the epoch budget and where the run executes."""


def checkpoint_payload(settings: RunSettings, state: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "settings": settings.model_dump(mode="json"), "search": state}


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserInputError(message)


def _check_rng(rng: Any) -> None:
    _require(isinstance(rng, dict), "search.rng must be a mapping")
    torch_state = rng.get("torch")
    expected = torch.get_rng_state()
    _require(isinstance(torch_state, torch.Tensor) and torch_state.dtype == expected.dtype
             and torch_state.shape == expected.shape, "search.rng.torch is not a torch RNG state")
    python = rng.get("python")
    _require(isinstance(python, str) and len(python) <= MAX_RNG_REPR and python.startswith("("),
             "search.rng.python is not a Python RNG state")
    numpy = rng.get("numpy")
    _require(isinstance(numpy, list) and len(numpy) == 5 and isinstance(numpy[0], str)
             and isinstance(numpy[1], torch.Tensor) and numpy[1].numel() == 624
             and all(isinstance(v, int | float) for v in numpy[2:]), "search.rng.numpy is not a numpy RNG state")


def check_search_state(state: Any) -> dict[str, Any]:
    """The ``search`` part of a checkpoint, if it has every key and type the search loop reads."""
    _require(isinstance(state, dict), "search must be a mapping")
    for key in ("method", "rng", "history", "next_epoch", "elapsed"):
        _require(key in state, f"search.{key} is missing")
    method = state["method"]
    _require(isinstance(method, dict), "search.method must be a mapping")
    for key, kind in (("model", dict), ("optimizers", dict), ("events", list), ("epoch", int), ("extra", dict)):
        _require(key in method, f"search.method.{key} is missing")
        _require(isinstance(method[key], kind) and not isinstance(method[key], bool),
                 f"search.method.{key} must be a {kind.__name__}")
    _require(all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in method["model"].items()),
             "search.method.model must map parameter names to tensors")
    _require(all(isinstance(v, dict) for v in method["optimizers"].values()),
             "search.method.optimizers must map names to optimizer states")
    _check_rng(state["rng"])
    history, next_epoch, elapsed = state["history"], state["next_epoch"], state["elapsed"]
    _require(isinstance(next_epoch, int) and not isinstance(next_epoch, bool) and next_epoch >= 0,
             "search.next_epoch must be a whole number >= 0")
    _require(isinstance(history, list) and all(isinstance(h, dict) and isinstance(h.get("epoch"), int)
                                               for h in history), "search.history must be a list of epoch records")
    _require(len(history) == next_epoch, f"search.history has {len(history)} epochs but search.next_epoch is "
                                         f"{next_epoch}")
    _require(isinstance(elapsed, int | float) and not isinstance(elapsed, bool) and math.isfinite(elapsed)
             and elapsed >= 0, "search.elapsed must be a finite number of seconds >= 0")
    return state


def check_search_checkpoint(payload: Any, settings: RunSettings) -> dict[str, Any]:
    """The search state of a loaded checkpoint file, checked against ``settings``; raises
    :class:`UserInputError` naming the missing key, the wrong type or the differing setting."""
    _require(isinstance(payload, dict), "not a search checkpoint (expected a mapping)")
    _require("search" in payload, "the 'search' key is missing (not a checkpoint of `mgas search`)")
    if "format" in payload or "settings" in payload:
        _require(payload.get("format") == FORMAT and payload.get("version") == VERSION,
                 f"format is {payload.get('format')!r} version {payload.get('version')!r}; "
                 f"expected {FORMAT!r} version {VERSION}")
        saved = payload.get("settings")
        _require(isinstance(saved, dict), "settings must be a mapping")
        ours, theirs = _flat(settings.model_dump(mode="json")), _flat(saved)
        differ = sorted(k for k in ours.keys() | theirs.keys()
                        if k not in FREE_TO_CHANGE and ours.get(k) != theirs.get(k))
        if differ:
            key = differ[0]
            raise UserInputError(f"it was written by a search with {key}={theirs.get(key)!r}, this one has "
                                 f"{key}={ours.get(key)!r} ({len(differ)} setting(s) differ); resume with the "
                                 "same settings or give another --out")
    return check_search_state(payload["search"])
