"""Shared fixtures: tiny settings that run in seconds on 2 CPU cores; a test session that is safe
beside real work (every Ray it starts lives in a temp folder of its own; a user's RAY_ADDRESS is
ignored); deterministic generated tests (hypothesis with a fixed seed, no example database)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings as hypothesis_settings

from mgas_core.methods.registry import build_settings
from mgas_core.settings.run import RunSettings
from tests.processes import private_ray_env

torch.set_num_threads(1)

# the same generated cases on every run (CI reproducible); `--hypothesis-profile explore` draws new ones
hypothesis_settings.register_profile("default", derandomize=True, database=None, deadline=None)
hypothesis_settings.register_profile("explore", derandomize=False, database=None, deadline=None)
hypothesis_settings.load_profile("default")


# --- the bad-input suite's count, printed at the end of every run (xdist workers report theirs) ---
_BAD_INPUT_FROM_WORKERS: Counter[str] = Counter()


def _bad_input_counts() -> Counter[str]:
    module = sys.modules.get("tests.reliability.bad_input")
    return Counter(module.STATS) if module is not None else Counter()


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["bad_input"] = dict(_bad_input_counts())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _BAD_INPUT_FROM_WORKERS.update(getattr(node, "workeroutput", {}).get("bad_input", {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    counts = _bad_input_counts() + _BAD_INPUT_FROM_WORKERS
    tracebacks = counts.pop("tracebacks", 0)
    if counts:
        parts = ", ".join(f"{kind} {n}" for kind, n in sorted(counts.items()))
        terminalreporter.write_line(f"bad-input suite: {sum(counts.values())} cases ({parts}); "
                                    f"tracebacks: {tracebacks}")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start Ray (``ray``, ``cluster``) run one after another on one xdist worker: two
    Rays at once on two cores would time each other out, and both tiers share the machine."""
    for item in items:
        if item.get_closest_marker("ray") or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(scope="session", autouse=True)
def _private_ray() -> Iterator[Path]:
    """No test joins, or is joined by, a Ray of the user running the suite (see tests/processes.py)."""
    with private_ray_env() as folder:
        yield folder


def tiny(**overrides: Any) -> RunSettings:
    """The ``smoke`` preset (a 3-cell, 4-channel, 2-node supernet on 8x8 synthetic data, each
    method's smallest schedule); overrides are dotted paths written with ``__``."""
    return build_settings("smoke", {k.replace("__", "."): v for k, v in overrides.items()})


def search_until(settings: RunSettings, stop_after: int | None = None, state: dict[str, Any] | None = None) -> Any:
    """Run (or resume from ``state``) a search; with ``stop_after``, return the resumable state
    captured after that epoch instead of the result."""
    from mgas_core.data import load_splits
    from mgas_core.engine.search import run_search

    class Stop(Exception):
        pass

    captured: dict[str, Any] = {}

    def on_epoch(record: dict[str, Any], state_fn: Any) -> None:
        if stop_after is not None and record["epoch"] == stop_after:
            captured["state"] = state_fn()
            raise Stop

    try:
        return run_search(settings, load_splits(settings.data), torch.device("cpu"), state=state, on_epoch=on_epoch)
    except Stop:
        return captured["state"]


PLUGIN = "tests.plugins.random_alpha"
"""A throwaway fifth method defined outside mgas_core (see the module's docstring)."""


@pytest.fixture
def random_alpha() -> Iterator[str]:
    """Register the throwaway method for one test, and remove it again afterwards."""
    import importlib

    from mgas_core.methods.registry import method_names, unregister_method

    module = importlib.import_module(PLUGIN)
    if module.NAME not in method_names():  # an earlier test unregistered it: register anew
        module = importlib.reload(module)
    yield module.NAME
    unregister_method(module.NAME)
    sys.modules.pop(PLUGIN, None)


@pytest.fixture
def tiny_settings():
    return tiny


@pytest.fixture
def no_such_cxx() -> Iterator[str]:
    """Inductor's C++ compiler set to one that does not exist (as ``$CXX`` would, read when torch
    imports its config); the name is yielded."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.cxx": (None, "no-such-compiler")}):
        yield "no-such-compiler"
