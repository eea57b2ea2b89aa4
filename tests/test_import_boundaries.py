"""Dependencies point one way (DESIGN.md, docs/layout.md), checked on every import statement of
every module wherever it stands (a lazy import inside a function counts) and on what a fresh
interpreter has loaded after importing every module of a package:

- between packages: mgas_common imports none of ours (and no torch); mgas_core imports neither
  orchestrator nor analysis (nor ray or pandas); analysis imports neither torch, ray, the
  orchestrator nor mgas_core (what it shares with the core is in mgas_common);
- inside mgas_core, by layer: settings/ imports only mgas_common; nn/, space/ and supernet/ never
  import methods/ or engine/; methods/ never imports engine/;
- no import cycle anywhere, between modules of any of our packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mgas_common", "mgas_core", "orchestrator", "analysis", "benchmarks")
FORBIDDEN = {
    "mgas_common": {"mgas_core", "orchestrator", "analysis", "benchmarks", "torch", "torchvision", "ray", "pandas"},
    "mgas_core": {"orchestrator", "analysis", "benchmarks", "ray", "pandas"},
    "analysis": {"torch", "torchvision", "ray", "orchestrator", "mgas_core", "benchmarks"},
}
LAYERS = {  # a subpackage of mgas_core -> the modules of ours it may not import (prefixes)
    "mgas_core.settings": ("mgas_core.",),
    "mgas_core.nn": ("mgas_core.methods", "mgas_core.engine", "mgas_core.supernet", "mgas_core.space"),
    "mgas_core.space": ("mgas_core.methods", "mgas_core.engine", "mgas_core.supernet"),
    "mgas_core.supernet": ("mgas_core.methods", "mgas_core.engine"),
    "mgas_core.methods": ("mgas_core.engine",),
}
LAYER_EXCEPTIONS = {"mgas_core.settings": ("mgas_core.settings.",)}  # a layer may import itself


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_names(path: Path, modules: dict[str, Path] | None = None) -> set[str]:
    """Dotted names of what one source file imports: for ``from a.b import c`` that is ``a.b.c`` when
    it is a module of ours, else ``a.b``. Imports only for type checkers are left out."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    names = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if modules is not None and full in modules else node.module)
    return names


def imported_packages(path: Path) -> set[str]:
    """Top-level packages named by the import statements of one source file."""
    return {name.split(".")[0] for name in imported_names(path)}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_source_file_imports_across_the_boundary(package):
    offenders = {str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
                 for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in offenders.items() if names} == {}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_inner_layers_of_the_core_do_not_import_outer_ones(layer):
    modules = all_modules()
    offenders = {}
    for name, path in modules.items():
        if name != layer and not name.startswith(layer + "."):
            continue
        bad = sorted(i for i in imported_names(path, modules)
                     if i.startswith(LAYERS[layer]) and not i.startswith(LAYER_EXCEPTIONS.get(layer, ("\0",))))
        if bad:
            offenders[name] = bad
    assert offenders == {}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_our_modules():
    modules = all_modules()
    graph = {name: {i for i in imported_names(path, modules) if i in modules and i != name}
             for name, path in modules.items()}
    assert import_cycles(graph) == []


@pytest.mark.slow
@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_the_package_loads_nothing_across_the_boundary(package):
    code = (f"import importlib, pkgutil, sys; import {package} as p\n"
            f"for m in pkgutil.walk_packages(p.__path__, '{package}.'): importlib.import_module(m.name)\n"
            "print(sorted({name.split('.')[0] for name in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = set(ast.literal_eval(done.stdout.strip().splitlines()[-1]))
    assert loaded & FORBIDDEN[package] == set()
