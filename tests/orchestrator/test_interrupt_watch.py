"""A Ctrl-C Python drops (raised where exceptions cannot propagate, such as the logging at-fork
handler Ray's process start runs) is raised again at the next check (orchestrator/interrupts.py)."""

from __future__ import annotations

import contextlib
import signal

import pytest

from orchestrator.interrupts import InterruptWatch, raise_if_interrupted


def test_a_dropped_ctrl_c_is_raised_again_at_the_next_check_and_the_handler_restored():
    before = signal.getsignal(signal.SIGINT)
    with InterruptWatch() as watch:
        assert signal.getsignal(signal.SIGINT) is watch
        raise_if_interrupted()  # nothing pending: nothing raised
        with contextlib.suppress(KeyboardInterrupt):  # dropped, as Python drops it in an at-fork handler
            signal.raise_signal(signal.SIGINT)
        assert watch.pending
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
    assert signal.getsignal(signal.SIGINT) is before
    raise_if_interrupted()  # outside a watch: nothing to raise
