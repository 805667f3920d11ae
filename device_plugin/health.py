"""GPU health as a small state machine: events make GPUs Unhealthy, probes bring them back.

Pure: no threads and no NVML here. The manager feeds it :class:`HealthEvent` s from the
backend and the results of probing Unhealthy GPUs, and advertises whatever it says.

Recovery (which NVIDIA's plugin does not do): a GPU marked Unhealthy is probed every
``probe_interval_s``; it becomes Healthy again after ``recovery_probes`` consecutive good
probes with no new critical XID in between (hysteresis, so a flapping GPU stays out).
``recovery_probes = 0`` turns recovery off.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable

from device_plugin import xids
from device_plugin.discovery.backend import HealthEvent

log = logging.getLogger("gpupack.health")


@dataclasses.dataclass(frozen=True)
class HealthSettings:
    skipped_xids: frozenset[int] = xids.DEFAULT_SKIPPED_XIDS  # application-caused, not the GPU
    probe_interval_s: float = 10.0  # seconds between probes of an Unhealthy GPU
    recovery_probes: int = 3  # consecutive good probes before Healthy again; 0 = never recover


@dataclasses.dataclass
class _State:
    healthy: bool = True
    reason: str = ""
    good_probes: int = 0


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What one event or probe did: which GPUs changed, and how the event was treated."""

    changed: tuple[str, ...]
    action: str  # "unhealthy", "ignored", "recovered", "none"


class HealthTracker:
    def __init__(self, gpu_ids: Iterable[str], settings: HealthSettings) -> None:
        self.settings = settings
        self._state = {g: _State() for g in gpu_ids}

    def healthy(self, gpu_id: str) -> bool:
        state = self._state.get(gpu_id)
        return state is not None and state.healthy

    def reason(self, gpu_id: str) -> str:
        state = self._state.get(gpu_id)
        return state.reason if state else "unknown GPU"

    def unhealthy(self) -> list[str]:
        return [g for g, s in self._state.items() if not s.healthy]

    def mark_unhealthy(self, gpu_id: str, reason: str) -> bool:
        state = self._state.setdefault(gpu_id, _State())
        was = state.healthy
        state.healthy, state.reason, state.good_probes = False, reason, 0
        return was

    def on_event(self, event: HealthEvent) -> Verdict:
        if event.xid is not None and event.xid in self.settings.skipped_xids:
            log.info(
                "ignoring XID %d on GPU %s: %s (application-caused, the GPU stays Healthy)",
                event.xid, event.gpu_id, xids.meaning(event.xid),
            )
            return Verdict((), "ignored")
        targets = list(self._state) if event.gpu_id is None else [event.gpu_id]
        reason = event.reason
        if event.xid is not None:
            reason = f"XID {event.xid}: {xids.meaning(event.xid)}"
        changed = tuple(g for g in targets if self.mark_unhealthy(g, reason))
        for g in changed:
            log.warning("GPU %s is now Unhealthy: %s", g, reason)
        return Verdict(changed, "unhealthy")

    def probe_round(self, probe: Callable[[str], str | None]) -> Verdict:
        """Probes every Unhealthy GPU once; returns those that became Healthy."""
        if self.settings.recovery_probes <= 0:
            return Verdict((), "none")
        recovered = []
        for gpu_id, state in self._state.items():
            if state.healthy:
                continue
            problem = probe(gpu_id)
            if problem is not None:
                state.good_probes = 0
                continue
            state.good_probes += 1
            if state.good_probes >= self.settings.recovery_probes:
                log.info(
                    "GPU %s has recovered (%d good probes since '%s'); Healthy again",
                    gpu_id, state.good_probes, state.reason,
                )
                state.healthy, state.reason, state.good_probes = True, "", 0
                recovered.append(gpu_id)
        return Verdict(tuple(recovered), "recovered" if recovered else "none")
