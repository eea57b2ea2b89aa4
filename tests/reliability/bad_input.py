"""The harness of the bad-input suite: run one `mgas` command line on bad input, in this process
(fast enough for thousands of cases), and check what a user must see.

Every case must end with exit code 2 and exactly one line ``mgas: error: ...`` on stderr that
names the field or the path at fault, with no traceback, no file written or changed anywhere
under the case's folder (the command runs with that folder as its working directory, so its
default outputs would land there too), no Ray left running (``ray.init`` or a Ray process below
this one), and within :data:`TIME_LIMIT_S` (enforced with a timer
signal, so a hang fails the case instead of the suite). Cases are counted per command; the
counts are printed at the end of the test run (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.cli import main

TIME_LIMIT_S = 20.0
"""Generous for a loaded 2-core CI machine; a refusal takes milliseconds to a second."""

STATS: Counter[str] = Counter()
"""Cases run per command or file format in this process, and ``tracebacks`` seen."""


class CaseTimeout(Exception):
    pass


@dataclass
class Outcome:
    rc: int | None
    out: str
    err: str
    seconds: float
    crash: str | None  # the traceback of an exception that escaped `main`


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"no answer within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(argv: Sequence[str], cwd: Path) -> Outcome:
    """``mgas ARGV`` in this process, in folder ``cwd``, with stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    crash = None
    rc: int | None = None
    start = time.monotonic()
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _time_limit(TIME_LIMIT_S):
            try:
                rc = main(list(argv))
            except SystemExit as exc:  # argparse errors
                rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:  # an escaped exception is exactly what this suite hunts: keep its traceback
        crash = traceback.format_exc()
    finally:
        os.chdir(old_cwd)
    return Outcome(rc, out.getvalue(), err.getvalue(), time.monotonic() - start, crash)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder`` with its size and content hash (what "nothing changed" compares)."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            files[str(path.relative_to(folder))] = (len(data), hashlib.sha1(data).hexdigest())
        elif path.is_dir():
            files[str(path.relative_to(folder)) + "/"] = (0, "")
    return files


def assert_refused(argv: Sequence[str], cwd: Path, names: Sequence[str], kind: str, case: Any = None) -> Outcome:
    """Run ``argv`` in ``cwd`` and check the refusal: exit 2, one line naming one of ``names``,
    no traceback, nothing under ``cwd`` written or changed, within the time limit."""
    before = snapshot(cwd)
    result = run_cli(argv, cwd)
    STATS[kind] += 1
    shown = case if case is not None else list(argv)
    if result.crash is not None:
        STATS["tracebacks"] += 1
        raise AssertionError(f"traceback for {shown!r}:\n{result.crash}")
    if "Traceback" in result.err:
        STATS["tracebacks"] += 1
    assert "Traceback" not in result.err, f"traceback on stderr for {shown!r}:\n{result.err}"
    assert result.rc == 2, f"exit {result.rc} (expected 2) for {shown!r}: {result.err!r} {result.out[-300:]!r}"
    assert result.err.startswith("mgas: error: ") and result.err.count("\n") == 1, \
        f"not one line for {shown!r}: {result.err!r}"
    assert any(name in result.err for name in names), f"{result.err!r} names none of {list(names)} for {shown!r}"
    assert result.seconds < TIME_LIMIT_S
    after = snapshot(cwd)
    assert after == before, f"files changed for {shown!r}: {set(after.items()) ^ set(before.items())}"
    assert ray_left_running() == [], f"Ray left running after {shown!r}: {ray_left_running()}"
    return result


RAY_PROCESSES = {"raylet", "gcs_server", "plasma_store", "dashboard", "log_monitor", "monitor"}


def ray_left_running() -> list[str]:
    """Ray started by this process and still up: ``ray.init`` in effect, or a Ray process below it."""
    import sys

    import psutil

    ray = sys.modules.get("ray")
    left = ["ray.init"] if ray is not None and ray.is_initialized() else []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.name() in RAY_PROCESSES or "ray" in os.path.basename((child.cmdline() or [""])[0]):
                left.append(f"{child.name()} (pid {child.pid})")
    return left
