"""The health state machine: which events count, and recovery with hysteresis."""

from __future__ import annotations

import pytest

from device_plugin.discovery.backend import HealthEvent
from device_plugin.health import HealthSettings, HealthTracker


@pytest.mark.parametrize(
    "xid, becomes_unhealthy",
    [(13, False), (31, False), (43, False), (45, False), (68, False), (109, False), (48, True), (79, True), (94, True)],
)
def test_application_xids_are_ignored_and_others_count(xid: int, becomes_unhealthy: bool) -> None:
    t = HealthTracker(["a", "b"], HealthSettings())
    verdict = t.on_event(HealthEvent("a", f"XID {xid}", xid))
    assert (not t.healthy("a")) is becomes_unhealthy
    assert t.healthy("b")
    assert verdict.action == ("unhealthy" if becomes_unhealthy else "ignored")


def test_configured_skip_list_replaces_the_default() -> None:
    t = HealthTracker(["a"], HealthSettings(skipped_xids=frozenset({79})))
    t.on_event(HealthEvent("a", "XID 79", 79))
    assert t.healthy("a")
    t.on_event(HealthEvent("a", "XID 13", 13))
    assert not t.healthy("a") and "XID 13" in t.reason("a")


def test_event_without_gpu_marks_every_gpu() -> None:
    t = HealthTracker(["a", "b"], HealthSettings())
    assert t.on_event(HealthEvent(None, "NVML event wait failed")).changed == ("a", "b")


def test_recovery_needs_consecutive_good_probes() -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=3))
    t.on_event(HealthEvent("a", "XID 79", 79))
    answers = iter([None, None, "lost", None, None, None])  # good, good, bad (reset), good x3
    results = [t.probe_round(lambda _: next(answers)).changed for _ in range(6)]
    assert results == [(), (), (), (), (), ("a",)]
    assert t.healthy("a")


def test_recovery_can_be_turned_off() -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=0))
    t.on_event(HealthEvent("a", "XID 79", 79))
    for _ in range(5):
        t.probe_round(lambda _: None)
    assert not t.healthy("a")


def test_healthy_gpus_are_not_probed() -> None:
    t = HealthTracker(["a", "b"], HealthSettings())
    t.on_event(HealthEvent("b", "XID 48", 48))
    probed: list[str] = []
    t.probe_round(lambda g: probed.append(g) or None)  # type: ignore[func-returns-value]
    assert probed == ["b"]
