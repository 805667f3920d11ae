"""The baselines gpupack is compared against: what operators run today, and the published rules.

Each is a small module with its formula in the docstring and one ``Placer`` class; shared
pieces (feasibility through the kernel's own ``units`` rule, first-fit and best-fit device
choice, node-level fractions) are in :mod:`~simulator.baselines.common`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from simulator.baselines import best_fit, fgd, kube_default, most_allocated, random_fit

if TYPE_CHECKING:
    from simulator.placers import Placer, Workload

BASELINES: Mapping[str, Callable[["Workload"], "Placer"]] = MappingProxyType({
    "kube-default": kube_default.Placer,
    "most-allocated": most_allocated.Placer,
    "best-fit": best_fit.Placer,
    "fgd": fgd.Placer,
    "random": random_fit.Placer,
})
