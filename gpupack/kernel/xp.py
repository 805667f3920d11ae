"""Finding the array namespace (NumPy or CuPy) once, at the kernel's entry.

CuPy is used only when a caller asks for it by name and it imports; there is no global
switch. Arrays from different namespaces are refused, never copied silently.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy

#: A NumPy or CuPy array; the kernel is written once for both, so the static type stays open.
Array = Any
#: The ``numpy`` or ``cupy`` module.
Namespace = Any

XP_NAMES = ("numpy", "cupy")


def namespace(name: str = "numpy") -> Namespace:
    """The module for ``numpy`` or ``cupy``; a clear error when CuPy is asked for but absent."""
    if name == "numpy":
        return numpy
    if name == "cupy":
        try:
            return importlib.import_module("cupy")
        except ImportError as err:
            raise ValueError(f"--xp cupy asked for, but cupy cannot be imported: {err}") from err
    raise ValueError(f"unknown array namespace {name!r}; choose one of {', '.join(XP_NAMES)}")


def array_namespace(*arrays: Array) -> Namespace:
    """The namespace all ``arrays`` belong to; refuses a mix of NumPy and CuPy arrays."""
    names = {type(a).__module__.split(".")[0] for a in arrays}
    if len(names) != 1:
        raise TypeError(f"arrays from different namespaces: {sorted(names)}")
    return numpy if names == {"numpy"} else namespace(names.pop())


def to_host(a: Array) -> numpy.ndarray[Any, Any]:
    """A NumPy copy (or view) of ``a``, wherever it lives."""
    if isinstance(a, numpy.ndarray):
        return a
    return numpy.asarray(a.get())


def row_sum(a: Array, xp: Namespace) -> Array:
    """Sum over each row of a ``(nodes, slots)`` array, or of each part's rows of a ``(parts,
    nodes, slots)`` one. ``einsum`` is several times faster than ``sum(axis=1)`` for the few
    columns a node has; booleans are counted as int32."""
    if a.dtype == bool:
        a = a.astype(xp.int32)
    return xp.einsum("ij->i" if a.ndim == 2 else "pij->pi", a)
