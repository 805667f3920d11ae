"""The JSON kube-scheduler exchanges with an extender (``k8s.io/kube-scheduler/extender/v1``).

Keys are the Go field names, as ``encoding/json`` writes them; a nil pointer, map or slice
arrives as ``null``. Pods and Nodes are Kubernetes API objects in their JSON form
(camelCase), the same form ``kubectl get -o json`` prints and the watch delivers.
"""

from __future__ import annotations

from typing import Any, TypedDict

#: A Kubernetes API object (Pod, Node, ...) as JSON.
KubeObject = dict[str, Any]


class NodeListJSON(TypedDict, total=False):
    kind: str
    apiVersion: str
    metadata: dict[str, Any]
    items: list[KubeObject] | None


class ExtenderArgs(TypedDict):
    Pod: KubeObject | None
    Nodes: NodeListJSON | None
    NodeNames: list[str] | None


class ExtenderFilterResult(TypedDict):
    Nodes: NodeListJSON | None
    NodeNames: list[str] | None
    FailedNodes: dict[str, str] | None
    FailedAndUnresolvableNodes: dict[str, str] | None
    Error: str


class HostPriority(TypedDict):
    Host: str
    Score: int


HostPriorityList = list[HostPriority]


class ExtenderBindingArgs(TypedDict):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


class ExtenderBindingResult(TypedDict):
    Error: str


class MetaPod(TypedDict):
    UID: str


class MetaVictims(TypedDict):
    Pods: list[MetaPod] | None
    NumPDBViolations: int


class Victims(TypedDict):
    Pods: list[KubeObject] | None
    NumPDBViolations: int


class ExtenderPreemptionArgs(TypedDict):
    Pod: KubeObject | None
    NodeNameToVictims: dict[str, Victims | None] | None
    NodeNameToMetaVictims: dict[str, MetaVictims | None] | None


class ExtenderPreemptionResult(TypedDict):
    NodeNameToMetaVictims: dict[str, MetaVictims] | None
