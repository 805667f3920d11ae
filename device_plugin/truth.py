"""The truth after the fact: which pod annotations the kubelet's own allocation contradicts.

The extender writes its device choice into ``gpupack.io/devices`` at bind time and the plugin
honours it in GetPreferredAllocation. But that call names no pod, so in a burst the kubelet
can hand two pods of one shape each other's annotated devices (docs/e2e.md); the extender,
whose watch reads the annotation, would then count the wrong GPU's memory for the pods'
lifetime. The kubelet's PodResources API says which container really holds which device; the
plugin compares it with the annotations and corrects those that differ (device_plugin/kube.py
does the I/O: list, merge patch with the resourceVersion as precondition, retry on conflict).

:func:`corrections` is pure: what the kubelet holds and what the pods say in, patches out.
The rules:

- only pods that carry a readable annotation and that the kubelet lists with devices of a
  gpupack resource; pods without GPUs of ours are never touched;
- per container and resource, the annotation becomes exactly the kubelet's ids. For
  time-sliced shares that includes the replica number, although the replicas of one GPU are
  interchangeable for memory accounting: the extender picks a free *share id* at bind, and the
  plugin honours an annotation only when all its ids are still available; an annotation that
  names a replica another pod holds would make the plugin fall back to its own choice, which
  may be another GPU. A replica-only change is reported as such (``kind="replica"``), a
  different GPU or MIG device as ``kind="device"``;
- containers and resources the kubelet does not list (not created yet) keep their annotation.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from gpupack import contract

#: (namespace, pod name) -> container -> resource -> device ids, as PodResources List says
Held = Mapping[tuple[str, str], Mapping[str, Mapping[str, Sequence[str]]]]


@dataclasses.dataclass(frozen=True)
class AnnotatedPod:
    """A pod on this node with a readable ``gpupack.io/devices`` annotation."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    assignment: contract.Assignment


@dataclasses.dataclass(frozen=True)
class Change:
    container: str
    resource: str
    annotated: tuple[str, ...]  # empty when the annotation named nothing for it
    given: tuple[str, ...]

    @property
    def kind(self) -> Literal["device", "replica"]:
        """``replica`` when only share numbers differ (the same GPUs), else ``device``."""
        same = collections.Counter(map(contract.physical_id, self.annotated)) == collections.Counter(
            map(contract.physical_id, self.given)
        )
        return "replica" if same else "device"


@dataclasses.dataclass(frozen=True)
class Correction:
    namespace: str
    name: str
    uid: str
    resource_version: str
    assignment: contract.Assignment  # the corrected annotation, whole
    changes: tuple[Change, ...]

    def patch(self) -> dict[str, Any]:
        """The merge patch: only the devices annotation, with the resourceVersion read as the
        precondition (a pod changed since gets 409 Conflict and is decided again)."""
        return {
            "metadata": {
                "resourceVersion": self.resource_version,
                "annotations": {contract.DEVICES_ANNOTATION: contract.encode_assignment(self.assignment)},
            }
        }


def corrections(held: Held, pods: Iterable[AnnotatedPod]) -> list[Correction]:
    """The annotations to correct, one :class:`Correction` per pod, in namespace/name order."""
    out = []
    for pod in sorted(pods, key=lambda p: (p.namespace, p.name, p.uid)):
        given = held.get((pod.namespace, pod.name))
        if not given:
            continue
        fixed = {c: {r: list(ids) for r, ids in res.items()} for c, res in pod.assignment.items()}
        changes = []
        for container in sorted(given):
            for resource in sorted(given[container]):
                ids = tuple(given[container][resource])
                if not contract.is_gpu_resource(resource) or not ids:
                    continue
                annotated = tuple(pod.assignment.get(container, {}).get(resource, ()))
                if sorted(annotated) == sorted(ids):
                    continue
                changes.append(Change(container, resource, annotated, ids))
                fixed.setdefault(container, {})[resource] = list(ids)
        if changes:
            out.append(Correction(pod.namespace, pod.name, pod.uid, pod.resource_version, fixed, tuple(changes)))
    return out


def describe(correction: Correction, change: Change) -> str:
    """One log line in an operator's words."""
    given, annotated = ", ".join(change.given), ", ".join(change.annotated)
    where = f"pod {correction.namespace}/{correction.name}: the kubelet gave container {change.container}"
    if not change.annotated:
        return f"{where} {given} ({change.resource}), which the annotation did not name; annotation corrected"
    return f"{where} {given}, not the annotated {annotated} ({change.resource}); annotation corrected"
