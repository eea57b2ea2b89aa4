"""Ctrl-C that is never lost while a command runs.

Python turns SIGINT into ``KeyboardInterrupt`` at the next instruction, wherever that is; when it
lands in code whose exceptions Python cannot raise (the ``logging`` at-fork handler that runs
while Ray starts its processes: "Exception ignored in: <function _releaseLock>"), the interrupt is
printed and dropped, and the command goes on. :class:`InterruptWatch` remembers every interrupt
and raises it where Python can; inside those handlers it only remembers it (raising there prints
a traceback and is dropped anyway), and :func:`raise_if_interrupted` raises it at the next safe
point (a sweep checks once Ray has started, before any trial).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType, TracebackType
from typing import Any

_UNRAISABLE = {"_releaseLock", "_acquireLock", "_after_at_fork_child_reinit_locks", "_at_fork_reinit"}
"""``logging``'s functions that run as at-fork handlers: an exception raised in them is ignored."""


def _in_fork_handler(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_name in _UNRAISABLE and frame.f_code.co_filename == logging.__file__:
            return True
        frame = frame.f_back
    return False


class InterruptWatch:
    """The SIGINT handler for the block: raise ``KeyboardInterrupt`` and remember it was asked."""

    def __init__(self) -> None:
        self.pending = False
        self.previous: Any = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        del signum
        self.pending = True
        if not _in_fork_handler(frame):
            raise KeyboardInterrupt

    def __enter__(self) -> InterruptWatch:
        self.previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        signal.signal(signal.SIGINT, self.previous)


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` when a Ctrl-C arrived under the current :class:`InterruptWatch`
    (one Python may have dropped)."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, InterruptWatch) and handler.pending:
        raise KeyboardInterrupt
