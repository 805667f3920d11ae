"""The replay protocol's shortcut on retries: after a departure, a pending pod that does not fit
on the node just freed is kept without asking the placer. Every placer must then place exactly
as when it is asked about every pending pod on every departure."""

from __future__ import annotations

import dataclasses

import numpy
import pytest

from simulator import example, placers, protocols


@pytest.mark.parametrize("name", placers.default_names())
def test_the_retry_shortcut_places_exactly_as_asking_every_time(name: str) -> None:
    cluster = example.fleet(1)
    tasks = example.workload(scale=1)[:700]  # pods wait and leave: retries happen

    def run(ask_all: bool) -> protocols.RunResult:
        wl = dataclasses.replace(placers.workload(tasks), seed=42)
        return protocols.run_replay(cluster, tasks, placers.make([name], wl)[0], wl, 42, numpy, ask_all=ask_all)

    fast, full = run(False), run(True)
    assert full.figures["peak_pending"] > 0  # the case the shortcut is for is exercised
    assert fast.records == full.records
    assert fast.figures == full.figures and fast.curves == full.curves
