"""Test helpers that keep the suite safe beside real work: every Ray a test brings up lives in a
temp folder of its own, and a test ends only processes it started, found by pid (the process it
spawned and that process's descendants), never by name or command-line pattern."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil

RAY_ENV = ("RAY_TMPDIR", "MGAS_RAY_TEMP_DIR", "RAY_ADDRESS")


def short_temp_dir() -> Path:
    """A fresh folder under /tmp with a short name (Ray's socket paths must stay under ~107 chars)."""
    return Path(tempfile.mkdtemp(prefix="mgr-", dir="/tmp"))


@contextmanager
def private_ray_env() -> Iterator[Path]:
    """Within the block, any Ray started by this process or by a subprocess it spawns (embedded
    ``mgas run``, ``ray.init``, ``ray.cluster_utils.Cluster``) keeps its sessions, sockets and
    "current cluster" file in a folder of its own, and ``RAY_ADDRESS`` of the user's shell is
    ignored, so no test can join, or be joined by, a Ray the user runs."""
    folder = short_temp_dir()
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ["RAY_TMPDIR"] = str(folder)
    os.environ["MGAS_RAY_TEMP_DIR"] = str(folder)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield folder
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)


def kill_process_tree(pid: int, timeout: float = 30.0) -> list[int]:
    """SIGKILL process ``pid`` and every process descended from it; returns the pids ended.

    The tree is frozen first (SIGSTOP, parents before children, repeated until no new process
    appears), so nothing in it can start a child between the listing and the kill."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    frozen: dict[int, psutil.Process] = {}
    while True:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = list(frozen.values())
        new = [p for p in tree if p.pid not in frozen]
        if not new:
            break
        for proc in new:
            with suppress(psutil.NoSuchProcess):
                proc.suspend()
            frozen[proc.pid] = proc
    for proc in frozen.values():
        with suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(list(frozen.values()), timeout=timeout)
    return list(frozen)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.1) -> None:
    """Wait until ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
