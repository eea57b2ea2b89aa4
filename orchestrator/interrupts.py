"""Ctrl-C that is never lost while a command runs.

Python turns SIGINT into ``KeyboardInterrupt`` at the next instruction, wherever that is; when it
lands in code whose exceptions Python cannot raise (the ``logging`` at-fork handler that runs
while Ray starts its processes: "Exception ignored in: <function _releaseLock>"), the interrupt is
printed and dropped, and the command goes on. :class:`InterruptWatch` raises it the same way and
also remembers it, and :func:`raise_if_interrupted` raises it again at the next safe point (a
sweep checks once Ray has started, before any trial).
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any


class InterruptWatch:
    """The SIGINT handler for the block: raise ``KeyboardInterrupt`` and remember it was asked."""

    def __init__(self) -> None:
        self.pending = False
        self.previous: Any = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        del signum, frame
        self.pending = True
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
