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


def test_a_ctrl_c_inside_loggings_at_fork_handler_is_only_remembered():
    # Python ignores (and prints, with a traceback) an exception raised in logging's at-fork handlers:
    # the watch does not raise there, it remembers, and the next check raises
    import logging
    import sys

    namespace = {"sys": sys}  # a frame whose code is logging's _releaseLock, as the at-fork handler runs it
    exec(compile("def _releaseLock():\n    return sys._getframe()\n", logging.__file__, "exec"), namespace)
    frames = [namespace["_releaseLock"]()]
    with InterruptWatch() as watch:
        watch(signal.SIGINT, frames[0])  # no KeyboardInterrupt here
        assert watch.pending
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()
        with pytest.raises(KeyboardInterrupt):  # anywhere else it raises at once
            watch(signal.SIGINT, sys._getframe())
