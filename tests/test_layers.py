"""The layering the package docstring states, checked: the kernel imports no I/O, no
Kubernetes and nothing above it; the core imports no HTTP server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "scheduler_ext"
KERNEL_MAY_IMPORT = {"__future__", "dataclasses", "enum", "collections", "importlib", "types", "typing", "numpy",
                     "scheduler_ext"}
CORE = ["cache.py", "decide.py", "requests.py"]


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", sorted((ROOT / "kernel").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_kernel_is_pure(path: Path) -> None:
    for name in imports(path):
        assert name.split(".")[0] in KERNEL_MAY_IMPORT, f"{path.name} imports {name}"
        if name.startswith("scheduler_ext"):
            assert name.startswith("gpupack.kernel"), f"{path.name} imports {name} from above the kernel"


@pytest.mark.parametrize("name", CORE)
def test_core_has_no_protocol_edges(name: str) -> None:
    for mod in imports(ROOT / name):
        assert mod.split(".")[0] not in {"http", "kubernetes", "grpc", "socket", "ssl"}, f"{name} imports {mod}"
        assert mod not in {"scheduler_ext.server", "scheduler_ext.watch", "scheduler_ext.binder", "scheduler_ext.main"}
