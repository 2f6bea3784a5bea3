"""The package's layers point one way: no module imports, even lazily or only for type checking,
a module that imports it back; and the configuration is a leaf that a typo in --set reaches
without PyTorch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import dsnas

PACKAGE = Path(dsnas.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every dsnas module that ``path`` imports anywhere: at the top, in a function, under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dsnas"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "dsnas":
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            found |= subs or {base}
            if len(subs) < len(node.names):  # names from the module itself
                found.add(base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state, stack = {}, []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


def test_the_cycle_check_finds_a_cycle_through_a_lazy_or_type_checking_import(tmp_path):
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    pkg = tmp_path / "dsnas"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .high import H\n")
    (pkg / "high.py").write_text("def f():\n    from . import low\n")
    known = {"dsnas", "dsnas.low", "dsnas.high"}
    assert _imports("dsnas.low", pkg / "low.py", known) == {"dsnas.high"}
    assert _imports("dsnas.high", pkg / "high.py", known) == {"dsnas.low"}


@pytest.mark.parametrize("low, high", [("config", "spaces"), ("config", "methods"), ("config", "runtime"),
                                       ("config", "search"), ("spaces.registry", "run"), ("methods", "run"),
                                       ("runtime", "config"), ("run", "train"), ("train", "cli")])
def test_a_lower_layer_never_reaches_a_higher_one(low, high):
    graph, seen, todo = _graph(), set(), [f"dsnas.{low}"]
    while todo:  # everything `low` imports, directly or not
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    assert f"dsnas.{high}" not in seen


def test_the_configuration_loads_and_refuses_a_typo_without_torch():
    code = ("import sys\nfrom dsnas.config import load_config\nfrom dsnas.errors import DsnasError\n"
            "load_config(None, ['epochs=30', 'space.width=0.5'])\n"
            "try:\n    load_config(None, ['epochz=3'])\nexcept DsnasError as e:\n    print(e)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["--set: unknown config key 'epochz' (did you mean epochs?)", "[]"]
