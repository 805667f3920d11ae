"""Health state machine edges, as fixed tables: hysteresis at every ``recovery_probes``, what
resets it, what an event on an already Unhealthy GPU reports, and the reasons shown."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from device_plugin import xids
from device_plugin.discovery.backend import HealthEvent
from device_plugin.health import HealthSettings, HealthTracker


def _probes(answers: list[str | None]) -> Iterator[str | None]:
    return iter(answers)


def _run(t: HealthTracker, answers: list[str | None]) -> list[tuple[str, ...]]:
    """One probe round per answer (one Unhealthy GPU); what each round recovered."""
    it = _probes(answers)
    return [t.probe_round(lambda _g: next(it)).changed for _ in answers]


@pytest.mark.parametrize(
    "needed, answers, recovered_at",
    [
        # (recovery_probes, probe answers in order (None = good), round index it recovers at or None)
        (1, [None], 0),
        (1, ["bad", None], 1),
        (2, [None], None),
        (2, [None, None], 1),
        (2, [None, "bad", None], None),
        (2, [None, "bad", None, None], 3),
        (3, [None, None], None),
        (3, [None, None, None], 2),
        (3, ["bad", "bad", None, None, None], 4),
        (3, [None, None, "bad", None, None], None),
        (5, [None] * 4, None),
        (5, [None] * 5, 4),
        (5, [None, None, None, None, "bad", None, None, None, None, None], 9),
    ],
)
def test_recovery_after_exactly_n_consecutive_good_probes(
    needed: int, answers: list[str | None], recovered_at: int | None
) -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=needed))
    t.on_event(HealthEvent("a", "XID 79", 79))
    results = _run(t, answers)
    expected = [("a",) if i == recovered_at else () for i in range(len(answers))]
    assert results == expected
    assert t.healthy("a") is (recovered_at is not None)
    assert t.unhealthy() == ([] if recovered_at is not None else ["a"])


@pytest.mark.parametrize("needed", [1, 2, 3])
def test_a_new_event_between_good_probes_restarts_the_count(needed: int) -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=needed))
    t.on_event(HealthEvent("a", "XID 79", 79))
    assert _run(t, [None] * (needed - 1)) == [()] * (needed - 1)
    # a second critical event before recovery: the good probes so far no longer count
    assert t.on_event(HealthEvent("a", "XID 48", 48)).changed == ()  # already Unhealthy
    assert _run(t, [None] * (needed - 1)) == [()] * (needed - 1)
    assert not t.healthy("a")
    assert _run(t, [None]) == [("a",)]


@pytest.mark.parametrize("needed", [1, 2, 3])
def test_after_recovery_a_new_fault_needs_the_full_count_again(needed: int) -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=needed))
    t.on_event(HealthEvent("a", "XID 79", 79))
    assert _run(t, [None] * needed)[-1] == ("a",)
    assert t.reason("a") == ""
    v = t.on_event(HealthEvent("a", "XID 79", 79))
    assert v.changed == ("a",) and v.action == "unhealthy"
    assert _run(t, [None] * (needed - 1)) == [()] * (needed - 1)
    assert not t.healthy("a")
    assert _run(t, [None]) == [("a",)]


@pytest.mark.parametrize("needed", [0, -1])
def test_recovery_off_probes_nothing(needed: int) -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=needed))
    t.on_event(HealthEvent("a", "XID 79", 79))
    probed: list[str] = []

    def probe(g: str) -> None:
        probed.append(g)

    for _ in range(4):
        v = t.probe_round(probe)
        assert v.changed == () and v.action == "none"
    assert probed == [] and not t.healthy("a")


@pytest.mark.parametrize(
    "answers, action",
    [([None], "recovered"), (["bad"], "none")],
)
def test_probe_round_action(answers: list[str | None], action: str) -> None:
    t = HealthTracker(["a"], HealthSettings(recovery_probes=1))
    t.on_event(HealthEvent("a", "gone", None))
    it = iter(answers)
    assert t.probe_round(lambda _g: next(it)).action == action


def test_each_unhealthy_gpu_keeps_its_own_count() -> None:
    t = HealthTracker(["a", "b", "c"], HealthSettings(recovery_probes=2))
    t.on_event(HealthEvent("a", "XID 79", 79))
    t.on_event(HealthEvent("b", "XID 79", 79))
    bad = {"b"}
    assert t.probe_round(lambda g: "lost" if g in bad else None).changed == ()
    assert t.probe_round(lambda g: "lost" if g in bad else None).changed == ("a",)
    bad.clear()
    assert t.probe_round(lambda g: None).changed == ()
    assert t.probe_round(lambda g: None).changed == ("b",)
    assert t.unhealthy() == [] and t.healthy("c")


@pytest.mark.parametrize(
    "event, reason",
    [
        (HealthEvent("a", "XID 79", 79), f"XID 79: {xids.meaning(79)}"),
        (HealthEvent("a", "XID 12345", 12345), f"XID 12345: {xids.meaning(12345)}"),
        (HealthEvent("a", "device lost"), "device lost"),
        (HealthEvent(None, "NVML event wait failed"), "NVML event wait failed"),
    ],
)
def test_reason_shown(event: HealthEvent, reason: str) -> None:
    t = HealthTracker(["a"], HealthSettings())
    assert t.healthy("a") and t.reason("a") == ""
    v = t.on_event(event)
    assert v.changed == ("a",) and v.action == "unhealthy"
    assert t.reason("a") == reason


def test_second_event_reports_no_change_but_updates_the_reason() -> None:
    t = HealthTracker(["a", "b"], HealthSettings())
    assert t.on_event(HealthEvent("a", "XID 79", 79)).changed == ("a",)
    v = t.on_event(HealthEvent(None, "NVML event wait failed"))
    assert v.changed == ("b",) and v.action == "unhealthy"
    assert t.reason("a") == "NVML event wait failed"
    assert t.unhealthy() == ["a", "b"]


@pytest.mark.parametrize("gpu_id", ["a", None])
def test_skipped_xid_changes_nothing(gpu_id: str | None) -> None:
    t = HealthTracker(["a", "b"], HealthSettings())
    v = t.on_event(HealthEvent(gpu_id, "XID 13", 13))
    assert v.changed == () and v.action == "ignored"
    assert t.unhealthy() == [] and t.reason("a") == ""


def test_unknown_gpus() -> None:
    t = HealthTracker(["a"], HealthSettings())
    assert not t.healthy("zz") and t.reason("zz") == "unknown GPU"
    # an event names a GPU the tracker was not built with: it is tracked from then on
    assert t.on_event(HealthEvent("zz", "XID 79", 79)).changed == ("zz",)
    assert not t.healthy("zz") and t.unhealthy() == ["zz"]
    assert t.mark_unhealthy("zz", "again") is False
    assert t.mark_unhealthy("a", "by hand") is True
    assert t.reason("a") == "by hand"


def test_default_settings() -> None:
    s = HealthSettings()
    assert s.recovery_probes == 3
    assert s.probe_interval_s == 10.0
    assert s.skipped_xids == xids.DEFAULT_SKIPPED_XIDS


def _messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gpupack.health"]


def test_logs_name_the_gpu_the_xid_and_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gpupack.health")
    t = HealthTracker(["a"], HealthSettings(recovery_probes=2))
    t.on_event(HealthEvent("a", "XID 13", 13))
    t.on_event(HealthEvent("a", "XID 79", 79))
    t.probe_round(lambda _g: None)
    t.probe_round(lambda _g: None)
    assert _messages(caplog) == [
        ("INFO", f"ignoring XID 13 on GPU a: {xids.meaning(13)} (application-caused, the GPU stays Healthy)"),
        ("WARNING", f"GPU a is now Unhealthy: XID 79: {xids.meaning(79)}"),
        ("INFO", f"GPU a has recovered (2 good probes since 'XID 79: {xids.meaning(79)}'); Healthy again"),
    ]


def test_an_event_on_an_unhealthy_gpu_logs_nothing_new(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="gpupack.health")
    t = HealthTracker(["a"], HealthSettings())
    t.on_event(HealthEvent("a", "lost"))
    t.on_event(HealthEvent("a", "lost again"))
    assert _messages(caplog) == [("WARNING", "GPU a is now Unhealthy: lost")]


def test_a_bad_probe_does_not_stop_the_round() -> None:
    t = HealthTracker(["a", "b"], HealthSettings(recovery_probes=1))
    t.on_event(HealthEvent(None, "NVML event wait failed"))
    probed: list[str] = []

    def probe(g: str) -> str | None:
        probed.append(g)
        return "still lost" if g == "a" else None

    assert t.probe_round(probe).changed == ("b",)
    assert probed == ["a", "b"]
