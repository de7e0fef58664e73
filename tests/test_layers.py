"""The package's layers, read from the sources as the wheel lays them out: a lower layer never
imports a higher one (lazy imports inside functions included), packages of one layer do not
import each other, and no two modules import each other, directly or round a longer cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
# source folder -> the package it installs as (pyproject's package-dir)
PACKAGE_DIRS = {"rescue_eval": "rescue_eval", "models": "rescue_eval.models", "datamodules": "rescue_eval.datamodules"}
# lowest first; the units of one layer may not import each other
LAYERS = [
    ["rescue_eval.core"],
    ["rescue_eval.dist", "rescue_eval.io", "rescue_eval.models", "rescue_eval.datamodules"],
    ["rescue_eval.sections", "rescue_eval.training"],
    ["rescue_eval.config"],
    ["rescue_eval.roles", "rescue_eval.outdir", "rescue_eval.failures"],
    ["rescue_eval.suite"],
    ["rescue_eval.job", "rescue_eval.segment", "rescue_eval.serve", "rescue_eval.doctor"],
    ["rescue_eval.cli"],
    ["rescue_eval.__main__"],
]


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGE_DIRS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    return {t for t in targets if t in known and t != name}


def unit_of(module: str) -> tuple[int, str]:
    for rank, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return rank, unit
    raise AssertionError(f"{module} is in no layer: add it to tests/test_layers.py's LAYERS")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items() if name != "rescue_eval"}


def violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        rank, unit = unit_of(module)
        for target in targets - {"rescue_eval"}:
            target_rank, target_unit = unit_of(target)
            if target_rank > rank or (target_rank == rank and target_unit != unit):
                wrong.append(f"{module} imports {target}")
    return sorted(wrong)


def test_no_layer_imports_a_higher_one_or_a_sibling(graph):
    assert not violations(graph), "\n".join(violations(graph))


def test_no_import_cycles(graph):
    """Tarjan's strongly connected components: every one must be a single module. A package
    importing its own submodules (its __init__) is not a cycle."""
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_checker_sees_violations():
    """A core module importing the app, and dist importing io (siblings), are caught."""
    fake = {"rescue_eval.core.x": {"rescue_eval.job", "rescue_eval.core.y"}, "rescue_eval.dist.a": {"rescue_eval.io.b"}}
    assert violations(fake) == ["rescue_eval.core.x imports rescue_eval.job", "rescue_eval.dist.a imports rescue_eval.io.b"]
