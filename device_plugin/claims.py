"""Honouring the extender's choice: which annotated pod a GetPreferredAllocation call is for.

The kubelet's GetPreferredAllocation names neither pod nor container, only the resource, the
available ids and the count. The extender wrote its choice into the pod's
``gpupack.io/devices`` annotation at bind time, so the plugin looks among the pods bound to
this node for a container that asked for this resource and this count, whose annotated ids
are all still available, skipping containers it already answered for, in the order the
kubelet admits pods: creation time (the kubelet sorts each batch of new pods by it), then
the order the plugin's own watch saw the pods arrive on the node (the order the kubelet's
watch delivers them). Two pending pods of the same size thus get their own annotated
devices even when bound within the same second.
Pure: the pods come in as :class:`PodClaim` s from whatever watches them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence


@dataclasses.dataclass(frozen=True)
class PodClaim:
    """One container's annotated devices for one resource."""

    pod_uid: str
    pod: str  # namespace/name, for logs
    container: str
    resource: str
    ids: tuple[str, ...]
    created: str  # RFC 3339 creation time; sorts in time order (1 s resolution)
    arrival: int = 0  # the order the pod was first seen on this node


def match(
    claims: Iterable[PodClaim],
    resource: str,
    available: Sequence[str],
    must_include: Sequence[str],
    size: int,
    answered: set[tuple[str, str, str]],
) -> PodClaim | None:
    avail = set(available)
    fits = [
        c
        for c in claims
        if c.resource == resource
        and len(c.ids) == size
        and set(c.ids) <= avail
        and set(must_include) <= set(c.ids)
        and (c.pod_uid, c.container, c.resource) not in answered
    ]
    return min(fits, key=lambda c: (c.created, c.arrival, c.pod, c.container), default=None)


class ClaimBook:
    """Remembers which containers were answered, forgetting pods that are gone."""

    def __init__(self) -> None:
        self._answered: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def take(
        self, claims: Sequence[PodClaim], resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> PodClaim | None:
        with self._lock:
            live = {c.pod_uid for c in claims}
            self._answered = {a for a in self._answered if a[0] in live}
            claim = match(claims, resource, available, must_include, size, self._answered)
            if claim is not None:
                self._answered.add((claim.pod_uid, claim.container, claim.resource))
            return claim
