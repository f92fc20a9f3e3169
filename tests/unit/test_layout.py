"""The package's layout rules, read from its source: dependencies run one way, and the
library never leans on the test tooling.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle
hidden behind a lazy import is still a cycle for the reader.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import genesis_registry

PACKAGE = Path(genesis_registry.__file__).parent
ROOT = "genesis_registry"


def module_name(path: Path) -> str:
    parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the package, the compiled core included (read from its stub)."""
    return {module_name(path): path for path in sorted([*PACKAGE.rglob("*.py"), PACKAGE / "_core.pyi"])}


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The modules ``name`` imports, as absolute names (``from . import x`` names module x)."""
    if path.suffix == ".pyi":
        return  # the compiled core imports no Python module; its stub's imports are for typing
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from pkg import mod` depends on mod; `from mod import name` on mod.
                submodule = f"{base}.{alias.name}"
                yield submodule if submodule in known else base


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {dep for dep in imported(name, path, known) if dep in known and dep != name}
        for name, path in known.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each reported once, from where it closes)."""
    found, state, stack = [], dict.fromkeys(edges, "new"), []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(edges[node]):
            if state[dep] == "open":
                found.append([*stack[stack.index(dep) :], dep])
            elif state[dep] == "new":
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if state[node] == "new":
            visit(node)
    return found


def without_package_inits(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges into a package's own ``__init__`` from its submodules are how Python loads
    them, not a dependency the submodule chose; everything else is kept."""
    return {
        name: {dep for dep in deps if not (name.startswith(dep + ".") and dep != ROOT)} for name, deps in edges.items()
    }


def test_the_cycle_finder_finds_a_lazy_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycles() -> None:
    edges = without_package_inits(graph())
    assert edges.get("genesis_registry.registry")
    assert cycles(edges) == []


def test_the_grpc_layer_depends_one_way() -> None:
    edges = graph()
    # registry -> balancer -> follow -> _core, never back
    assert "genesis_registry.follow" in edges["genesis_registry.balancer.sync"]
    for module, deps in edges.items():
        if module.startswith(("genesis_registry.balancer", "genesis_registry.stream", "genesis_registry.follow")):
            assert "genesis_registry.registry" not in deps, module


def test_only_the_plugin_imports_pytest_and_nothing_imports_the_plugin() -> None:
    known = modules()
    for name, path in known.items():
        deps = set(imported(name, path, known))
        if name != "genesis_registry.testing":
            assert not {"pytest", "_pytest"} & {d.partition(".")[0] for d in deps}, name
            assert "genesis_registry.testing" not in deps, name
