"""Hypothesis profiles, chosen by ``GPUPACK_HYPOTHESIS_PROFILE`` (default ``ci``).

- ``ci`` (``make test``, ``.ci/run``): the properties that guard an invariant (never past
  capacity, feasibility equal to a brute force, no 500) run derandomized, the same examples
  every run; the others replay the committed example database (``tests/hypothesis-examples/``,
  read only) before their random examples, so a failure found once is tried for good.
- ``nightly``: random everywhere, five times the examples, clusters three times larger, and
  new failures written to the committed database (commit them with the fix).
- ``dev``: random, the local ``.hypothesis/`` database plus the committed one.

Tests take their sizes and settings from here: :data:`SIZES`, :func:`invariant`, :func:`explore`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, MultiplexedDatabase, ReadOnlyDatabase

PROFILE = os.environ.get("GPUPACK_HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "nightly", "dev"):
    raise SystemExit(f"GPUPACK_HYPOTHESIS_PROFILE={PROFILE!r}: choose ci, nightly or dev")
COMMITTED = DirectoryBasedExampleDatabase(Path(__file__).resolve().parent / "hypothesis-examples")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How large the random clusters are: nodes, slots per node, units per request."""

    nodes: int
    slots: int
    count: int
    scale: int  # examples multiplier


SIZES = {"ci": Sizes(4, 5, 4, 1), "dev": Sizes(4, 5, 4, 1), "nightly": Sizes(12, 6, 5, 5)}[PROFILE]

_DATABASE: Any = {
    "ci": ReadOnlyDatabase(COMMITTED),
    "dev": MultiplexedDatabase(DirectoryBasedExampleDatabase(".hypothesis/examples"), ReadOnlyDatabase(COMMITTED)),
    "nightly": COMMITTED,
}[PROFILE]


def invariant(max_examples: int) -> settings:
    """Settings for a property that guards an invariant: derandomized in ``ci``."""
    if PROFILE == "ci":
        return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                        suppress_health_check=[HealthCheck.too_slow])
    return explore(max_examples)


def explore(max_examples: int) -> settings:
    """Settings for a property that explores: random, replaying the committed examples first."""
    return settings(max_examples=max_examples * SIZES.scale, deadline=None, database=_DATABASE,
                    suppress_health_check=[HealthCheck.too_slow])
