"""Reservations: what the cache holds for a pod before a watch event confirms it, and the bind's choice.

A bind in flight holds a *reservation* under the pod's uid (:meth:`Holds.reserve`, the devices
:meth:`Holds.assign` chose with the kernel), so two binds cannot take the same device; a bind
that fails releases it (:meth:`Holds.release`), and the pod's own events replace it.

Between prioritize and bind, a pod may hold a *provisional* reservation (:meth:`Holds.hold`):
the devices the kernel would give it on the node it ranked first, so the next pods of a burst
are decided against them. Its bind replaces it, the pod's binding or deletion event releases
it, and it expires after :data:`HOLD_SECONDS` (``hold_seconds``) by the cache's clock
(injectable, so tests move time without sleeping). The pod itself never sees its own
provisional hold (``exclude`` in :meth:`scheduler_ext.cache.candidates.Candidates.select_positions`,
through :meth:`Holds.free_in_copy`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy

from gpupack import contract, kernel, node_slots
from gpupack.kernel import pairing, slots as kslots
from scheduler_ext.cache.state import ClusterState, PodRecord
from scheduler_ext.podspec import PodDemand

#: Seconds a provisional hold (prioritize -> bind) lasts when no bind or binding event
#: comes: kube-scheduler binds within milliseconds of prioritize unless a PreBind step (volume
#: binding) waits, and a hold left by a pod that was never bound must not block capacity for long.
HOLD_SECONDS = 5.0


class Holds:
    """Reservations and provisional holds on the :class:`~scheduler_ext.cache.state.ClusterState`,
    under its lock; the holds' expiry times are ``state.hold_expiry``."""

    def __init__(self, state: ClusterState, clock: Callable[[], float], hold_seconds: float,
                 shares: Callable[[], pairing.ShareMix] = lambda: pairing.NO_SHARES) -> None:
        self._state = state
        self._shares = shares  # the share mix a packing policy's device choice follows
        self._lock = state.lock
        self._clock = clock  # seconds, monotonic; tests pass their own
        self.hold_seconds = hold_seconds

    def reserve(self, demand: PodDemand, node: str, assignment: contract.Assignment,
                provisional: bool = False) -> None:
        """Holds ``assignment`` for ``demand`` on ``node`` until the pod's event or :meth:`release`
        (``provisional``: or until it expires, see :meth:`hold`)."""
        with self._lock:
            state = self._state
            state.drop_pod(demand.uid)
            state.account(demand.uid, node, demand.cpu_milli, demand.node_memory_mib)
            held = dataclasses.replace(demand, node=node, assignment=assignment)
            if provisional:
                state.hold_expiry[demand.uid] = self._clock() + self.hold_seconds
            state.add_pod(PodRecord(held, reserved=True, provisional=provisional))

    def release(self, uid: str) -> None:
        """Drops a reservation (a bind that failed); a pod the watch confirmed is kept."""
        with self._lock:
            rec = self._state.pods.get(uid)
            if rec is not None and rec.reserved:
                self._state.delete_pod(uid)

    def assign(self, demand: PodDemand, node: str, policy: kernel.Policy,
               provisional: bool = False) -> contract.Assignment | None:
        """Chooses devices for ``demand`` on ``node`` with the kernel and reserves them, in one
        step under the lock; None when they do not fit (any more). The pod's own provisional
        hold does not count against it."""
        with self._lock:
            state = self._state
            st = state.nodes.get(node)
            if st is None:
                return None
            if demand.uid in state.hold_expiry:
                state.drop_pod(demand.uid)
            rows = state.arrays.rows(numpy.asarray([st.row]))
            chosen: dict[str, list[str]] = {}
            shares = self._shares() if policy.leads(1) else pairing.NO_SHARES
            lead = demand.lead
            for resource, count in demand.totals().items():
                # as the decider asks the kernel: the pod's CPU and memory go with the leading resource
                req = state.request(resource, count, demand.memory_mib,
                                    demand.cpu_milli if resource == lead else 0,
                                    demand.node_memory_mib if resource == lead else 0, demand.products)
                picks = kernel.choose_devices(rows, 0, req, numpy, shares if resource == lead else pairing.NO_SHARES)
                if not picks:
                    return None
                ids = node_slots.device_ids(st.slots, st.used, picks)
                chosen[resource] = ids
            assignment: contract.Assignment = {}
            for ask in demand.asks:
                ids = chosen[ask.resource]
                assignment.setdefault(ask.container, {})[ask.resource] = ids[: ask.count]
                chosen[ask.resource] = ids[ask.count :]
            self.reserve(demand, node, assignment, provisional)
            return assignment

    def hold(self, demand: PodDemand, node: str, policy: kernel.Policy) -> contract.Assignment | None:
        """A provisional reservation for a pod not bound yet: the devices the kernel would choose
        for it on ``node``, held until its bind (which replaces it), its binding or deletion
        event (which releases it), or :attr:`hold_seconds` by the clock. A pod already bound or
        binding keeps what it has; None when nothing was held."""
        with self._lock:
            old = self._state.pods.get(demand.uid)
            if demand.node or not demand.wants_gpu or (old is not None and not old.provisional):
                return None
            return self.assign(demand, node, policy, provisional=True)

    def held(self, uid: str) -> str:
        """The node of pod ``uid``'s provisional hold, or ""."""
        with self._lock:
            self.expire()
            rec = self._state.pods.get(uid) if uid in self._state.hold_expiry else None
            return rec.applied_to if rec is not None else ""

    def count(self) -> int:
        """How many provisional holds there are now."""
        with self._lock:
            self.expire()
            return len(self._state.hold_expiry)

    def __contains__(self, uid: object) -> bool:
        """Whether pod ``uid`` has a provisional hold (expired or not: see :meth:`expire`).
        Under the lock."""
        return uid in self._state.hold_expiry

    def expire(self) -> None:
        """Releases the provisional holds whose time is up. Under the lock."""
        expiry = self._state.hold_expiry
        if not expiry:
            return
        now = self._clock()
        while expiry:
            uid, until = next(iter(expiry.items()))
            if until > now:
                break
            self._state.delete_pod(uid)

    def free_in_copy(self, rows: kslots.Slots, idx: numpy.ndarray[Any, Any], uid: str) -> None:
        """Adds pod ``uid``'s held units, CPU and memory back to the copied ``rows`` (row
        indices ``idx``), so that it is not refused for the devices held for itself. Under the
        lock."""
        state = self._state
        rec = state.pods.get(uid)
        st = state.nodes.get(rec.applied_to) if rec is not None and rec.applied_to else None
        if rec is None or st is None:
            return
        for j in numpy.nonzero(idx == st.row)[0].tolist():
            for use in rec.uses:
                rows.free[j, use.col] = min(rows.free[j, use.col] + 1, rows.capacity[j, use.col])
                rows.free_memory_mib[j, use.col] = min(rows.free_memory_mib[j, use.col] + use.memory_mib,
                                                       rows.memory_mib[j, use.col])
            _, cpu, mem = state.pod_requests.get(uid, ("", 0, 0))
            if rows.node_cpu_free[j] != kslots.UNLIMITED:
                rows.node_cpu_free[j] += cpu
            if rows.node_memory_free[j] != kslots.UNLIMITED:
                rows.node_memory_free[j] += mem
