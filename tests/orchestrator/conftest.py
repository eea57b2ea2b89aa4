"""Fixtures of the orchestrator tests."""

from __future__ import annotations

import importlib
import sys

import pytest

from mgas_core.methods.registry import method_names, unregister_method

PLUGIN = "tests.plugins.random_alpha"


@pytest.fixture
def random_alpha():
    """Register the throwaway method for one test, and remove it again afterwards."""
    module = importlib.import_module(PLUGIN)
    if module.NAME not in method_names():  # an earlier test unregistered it: register anew
        module = importlib.reload(module)
    yield module.NAME
    unregister_method(module.NAME)
    sys.modules.pop(PLUGIN, None)
