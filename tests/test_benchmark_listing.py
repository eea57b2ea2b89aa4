"""``python -m benchmarks``: one entry point lists every benchmark a user runs and, apart, the
diagnostics and the official-code driver; no module of ``benchmarks/`` is left out of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import listing

pytestmark = [pytest.mark.benchmark]

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = {"benchmarks.measure", "benchmarks.official.compare", "benchmarks.official.mgas"}  # imported, not run


def test_every_runnable_module_is_listed_once_with_its_purpose_and_commands():
    listed = listing()
    modules = [entry["module"] for section in listed.values() for entry in section]
    assert len(modules) == len(set(modules))
    on_disk = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "benchmarks").rglob("*.py")
               if p.stem not in ("__init__", "__main__")}
    assert set(modules) == on_disk - LIBRARY
    assert {e["module"].rsplit(".", 1)[-1] for e in listed["benchmarks"]} == {
        "supernet", "search_epoch", "compile_retrain", "orchestration", "cuda_readiness"}
    assert all(e["module"].startswith("benchmarks.diagnostics.") for e in listed["diagnostics"])
    for entry in (e for section in listed.values() for e in section):
        assert entry["purpose"] and "``" not in entry["purpose"]
        assert all(c.startswith(f"python -m {entry['module']} ") or c == f"python -m {entry['module']}"
                   for c in entry["commands"])
    supernet = " ".join(next(e for e in listed["benchmarks"] if e["module"] == "benchmarks.supernet")["commands"])
    assert "--official-darts PATH" in supernet and "--official-mgas PATH" in supernet


def test_the_listing_prints_without_importing_torch():
    code = "import runpy, sys; runpy.run_module('benchmarks', run_name='__main__'); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    text, torch_loaded = done.stdout.rstrip().rsplit("\n", 1)
    assert torch_loaded == "False"
    assert "Benchmarks:" in text and "Diagnostics" in text.split("Benchmarks:")[1]
    for entry in (e for section in listing().values() for e in section):
        assert f"  {entry['module']}: {entry['purpose']}" in text
    as_json = subprocess.run([sys.executable, "-m", "benchmarks", "--json"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert json.loads(as_json.stdout) == listing()
