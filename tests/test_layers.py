"""The floors of the house, checked on every first-party import in the tree.

- the shared floor, :mod:`gpupack` (contract, kernel, node_slots, topology, kubeletapi), imports
  neither program nor anything above it;
- :mod:`device_plugin` and :mod:`scheduler_ext` stand side by side on it and never import each other;
- :mod:`simulator` and :mod:`gpupack_cli` are the top floor: the only code that may import both
  programs, and nothing below imports them;
- the kernel imports no I/O (no gRPC, HTTP, Kubernetes client, sockets, files) and nothing above it;
- hardware discovery imports no gRPC, HTTP or Kubernetes client, and production code never
  imports the fakes at load time;
- the extender's core (cache, decide, podspec) imports no protocol edge;
- there is no import circle among first-party modules.

An import counts wherever it is written (inside a function too), except under ``if TYPE_CHECKING:``;
the one lazy import allowed to break a rule is the fakes factory behind ``--backend fake``.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gpupack", "device_plugin", "scheduler_ext", "simulator", "gpupack_cli")
FLOOR = {"gpupack": 0, "device_plugin": 1, "scheduler_ext": 1, "simulator": 2, "gpupack_cli": 2}
IO = {"grpc", "http", "urllib", "socket", "ssl", "socketserver", "kubernetes", "prometheus_client", "requests"}
KERNEL_MAY_IMPORT = {"__future__", "dataclasses", "enum", "collections", "importlib", "types", "typing", "math",
                     "itertools", "functools", "numpy", "gpupack"}
EXTENDER_CORE = ("scheduler_ext.cache", "scheduler_ext.decide", "scheduler_ext.podspec")
EXTENDER_EDGES = ("scheduler_ext.server", "scheduler_ext.watch", "scheduler_ext.binder", "scheduler_ext.main")


@dataclasses.dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (first-party: the most specific module that exists)
    line: int
    lazy: bool  # inside a function

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    out: list[Path] = []
    for pkg in PACKAGES:
        out += [p for p in sorted((ROOT / pkg).rglob("*.py")) if "kubeletapi" not in p.parts]
    return out


MODULES = {module_name(p) for p in source_files()} | {"gpupack.kubeletapi"}


def _resolve(name: str) -> str:
    """The most specific first-party module a dotted name refers to (or the name itself)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) if parts else name


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(path: Path) -> Iterator[Import]:
    name = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        if node.lineno in skip:
            continue
        for t in targets:
            first = t.split(".")[0]
            yield Import(name, _resolve(t) if first in PACKAGES else t, node.lineno, node.lineno in in_function)


ALL = [imp for p in source_files() for imp in imports_of(p)]


def first_party(imp: Import) -> bool:
    return imp.target.split(".")[0] in PACKAGES


def test_the_tree_is_seen() -> None:
    # a guard for the guard: the walk finds the modules each rule below is about
    for mod in ("gpupack.contract", "gpupack.kernel.evaluate", "gpupack.node_slots", "device_plugin.manager",
                "scheduler_ext.server", "simulator.main", "gpupack_cli.cli"):
        assert mod in MODULES
    assert any(i.source == "device_plugin.manager" and i.target == "gpupack.node_slots" for i in ALL)


def test_no_arrow_points_up_or_across() -> None:
    wrong = []
    for imp in filter(first_party, ALL):
        src, dst = imp.source.split(".")[0], imp.target.split(".")[0]
        if FLOOR[dst] > FLOOR[src] or (FLOOR[dst] == FLOOR[src] == 1 and src != dst):
            wrong.append(str(imp))
    assert not wrong, "imports against the floors:\n" + "\n".join(wrong)


@pytest.mark.parametrize("imp", [i for i in ALL if i.source.startswith("gpupack.kernel")], ids=str)
def test_kernel_is_pure(imp: Import) -> None:
    assert imp.target.split(".")[0] in KERNEL_MAY_IMPORT, f"{imp}: the kernel imports no I/O"
    if imp.target.startswith("gpupack"):
        assert imp.target.startswith("gpupack.kernel"), f"{imp}: from above the kernel"


def test_the_shared_floor_does_no_io() -> None:
    # the generated kubelet API (gpupack.kubeletapi) is the only gRPC on the shared floor
    wrong = [str(i) for i in ALL if i.source.startswith("gpupack") and not i.source.startswith("gpupack_cli")
             and i.target.split(".")[0] in IO]
    assert not wrong, "\n".join(wrong)


def test_discovery_speaks_to_no_protocol() -> None:
    wrong = [str(i) for i in ALL if i.source.startswith("device_plugin.discovery") and i.target.split(".")[0] in IO]
    assert not wrong, "\n".join(wrong)


def test_production_code_never_loads_the_fakes() -> None:
    wrong = [str(i) for i in ALL
             if i.target.startswith("device_plugin.fakes") and not i.source.startswith(("device_plugin.fakes", "gpupack_cli", "simulator"))
             and not (i.lazy and i.source == "device_plugin.discovery")]
    assert not wrong, "\n".join(wrong)


def test_the_extender_core_has_no_protocol_edges() -> None:
    wrong = [str(i) for i in ALL if i.source.startswith(EXTENDER_CORE)
             and (i.target.split(".")[0] in IO | {"grpc"} or i.target.startswith(EXTENDER_EDGES))]
    assert not wrong, "\n".join(wrong)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for imp in filter(first_party, ALL):
        if imp.target != imp.source and not imp.source.startswith(imp.target + "."):  # a package's own __init__
            edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def test_no_import_circle() -> None:
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_circle_finder_finds_circles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
