"""The package graph of ``fabstir``, read from the source: layered, acyclic, and cheap to import from below.

Every ``import`` / ``from ... import`` in ``src/fabstir`` counts, wherever it sits: at module level, inside a
function (a lazy import still couples the packages), and under ``if TYPE_CHECKING:`` (no runtime cycle, but a
type-level dependency on a higher layer is the same design fault). A string constant that names a fabstir
module (the target of an ``importlib.import_module`` lazy-import table) counts too.

A "package" is the first name under ``fabstir``: ``fabstir.node.engines.llama`` belongs to ``node``, and the
top-level modules (``errors``, ``keys``, ``_net``...) are packages of their own. ``fabstir`` itself (its
``__init__``) is the public facade over the SDK.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
FACADE = "fabstir"

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "_clock", "_retry", "_version"}),
    frozenset({"_net", "keys", "protocol"}),
    frozenset({"chain", "storage", "fingerprints"}),
    frozenset({"discovery", "zk"}),
    frozenset({"sdk", "node"}),
    frozenset({FACADE, "gateway"}),
    frozenset({"cli", "testing"}),
)
"""Bottom to top. A package may import only packages of lower layers (never one beside it: ``sdk`` and ``node``
stay independent of each other)."""

LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def _imported(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """Every fabstir module named by an import (or an import-path string) in ``path``, with its line."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                yield ".".join(base + ([node.module] if node.module else [])), node.lineno
            else:
                yield node.module or "", node.lineno
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("fabstir."):
            if all(part.isidentifier() for part in node.value.split(".")):
                yield node.value, node.lineno


def import_edges() -> dict[tuple[str, str], list[str]]:
    """``(importer package, imported package)`` -> where (``module:line``), for imports across packages."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted((SRC / "fabstir").rglob("*.py")):
        module = _module_name(path)
        for target, line in _imported(path, module):
            if target == "fabstir" or target.startswith("fabstir."):
                pair = (_package(module), _package(target))
                if pair[0] != pair[1]:
                    edges.setdefault(pair, []).append(f"{module}:{line} imports {target}")
    return edges


def find_cycle(edges: dict[tuple[str, str], list[str]]) -> list[str] | None:
    """A cycle of packages (first package repeated at the end), or ``None``."""
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    done: set[str] = set()

    def visit(package: str, path: list[str]) -> list[str] | None:
        if package in path:
            return path[path.index(package):] + [package]
        if package in done:
            return None
        for target in sorted(graph.get(package, ())):
            if cycle := visit(target, path + [package]):
                return cycle
        done.add(package)
        return None

    return next((c for p in sorted(graph) if (c := visit(p, [])) is not None), None)


def test_every_package_has_a_layer() -> None:
    packages = {_package(_module_name(p)) for p in (SRC / "fabstir").rglob("*.py")}
    assert packages - LAYER.keys() == set(), "give each new package a place in LAYERS"


def test_no_import_cycle_between_packages() -> None:
    edges = import_edges()
    cycle = find_cycle(edges)
    assert cycle is None, "package cycle " + " -> ".join(cycle or []) + "".join(
        f"\n  {where}" for a, b in zip(cycle or [], (cycle or [])[1:]) for where in edges[(a, b)])


def test_imports_follow_the_layers() -> None:
    upward = [where for (source, target), found in sorted(import_edges().items())
              if LAYER.get(target, -1) >= LAYER.get(source, -1) for where in found]
    assert upward == [], "imports that break the layer order:\n" + "\n".join(upward)


def test_cycle_finder_finds_a_cycle() -> None:
    edges = {("a", "b"): [], ("b", "c"): [], ("c", "a"): [], ("c", "d"): []}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"): [], ("a", "c"): [], ("b", "c"): []}) is None


@pytest.mark.parametrize(("module", "absent"), [
    ("fabstir.discovery.http_service", ("fabstir.node", "fabstir.sdk", "fabstir.cli")),
    ("fabstir.discovery", ("fabstir.node", "fabstir.sdk", "fabstir.cli")),
    ("fabstir.storage", ("fabstir.chain", "fabstir.discovery", "fabstir.node", "fabstir.sdk", "fabstir.cli")),
    ("fabstir.chain", ("fabstir.discovery", "fabstir.node", "fabstir.sdk", "fabstir.cli")),
    ("fabstir.protocol", ("fabstir.chain", "fabstir.discovery", "fabstir.node", "fabstir.sdk", "fabstir.cli")),
])
def test_importing_a_lower_layer_loads_nothing_above_it(module: str, absent: tuple[str, ...]) -> None:
    code = (f"import sys, {module}\n"
            "print('\\n'.join(m for m in sys.modules if m.startswith('fabstir')))")
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert [m for m in loaded if m.startswith(absent)] == []
