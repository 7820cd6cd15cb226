"""Which upstream module may know which: read from the source, without importing it."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = "router.proxy.upstream"
SOURCE = Path(__file__).resolve().parents[2] / "router" / "proxy" / "upstream"


def imports_of(module: str) -> set[str]:
    """The package's own modules that `module` imports ('' for the package itself)."""
    tree = ast.parse((SOURCE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            if name == PACKAGE:
                found.add("")
            elif name.startswith(PACKAGE + "."):
                found.add(name[len(PACKAGE) + 1 :].split(".")[0])
    return found


def submodules() -> list[str]:
    return sorted(path.stem for path in SOURCE.glob("*.py") if path.stem != "__init__")


def test_the_connection_knows_nothing_of_pool_exchange_or_client():
    assert imports_of("connection") <= {"errors", "request"}


def test_no_submodule_imports_the_package_or_another_in_a_cycle():
    graph = {module: imports_of(module) for module in submodules()}
    assert all("" not in deps for deps in graph.values()), graph
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        raise AssertionError(f"import cycle: {cycle.args[1]}") from None
