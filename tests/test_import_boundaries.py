"""Dependencies point one way (DESIGN.md): mgas_core imports neither orchestrator nor analysis (nor
ray or pandas); analysis imports neither torch nor ray. Checked twice: every import statement of
every module, wherever it stands (a lazy import inside a function counts), and what a fresh
interpreter has loaded after importing every module of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "mgas_core": {"orchestrator", "analysis", "ray", "pandas"},
    "analysis": {"torch", "torchvision", "ray", "orchestrator"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages named by the import statements of one source file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_source_file_imports_across_the_boundary(package):
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_the_package_loads_nothing_across_the_boundary(package):
    code = (f"import importlib, pkgutil, sys; import {package} as p\n"
            f"for m in pkgutil.walk_packages(p.__path__, '{package}.'): importlib.import_module(m.name)\n"
            "print(sorted({name.split('.')[0] for name in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert loaded & FORBIDDEN[package] == set()
