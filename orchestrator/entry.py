"""The ``mgas`` command's entry point: Ctrl-C is ``mgas: interrupted`` and exit 130 from the first
instruction on, also while the command line's modules (torch, Ray, every method) are imported.

Only the standard library is imported here. Until the command line is ready to take a Ctrl-C
itself (:func:`orchestrator.cli.main` catches ``KeyboardInterrupt``), SIGINT ends the process at
once with that line; a command interrupted later stops as that command stops (a sweep saves its
state first, so ``--resume`` continues it).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED = 130


def _interrupted(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    os.write(2, b"mgas: interrupted\n")
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        from orchestrator.cli import main as cli_main
    finally:
        signal.signal(signal.SIGINT, previous)
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
