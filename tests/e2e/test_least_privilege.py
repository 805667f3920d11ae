"""Least privilege, enforced by the real kube-apiserver (issue 15, item 8).

The access objects of ``deploy/manifests`` (the chart rendered) are applied for real, and each
program's own API code runs with a token of its own ServiceAccount: what it does succeeds, and
the wider writes RBAC alone would let through are refused by the chart's
ValidatingAdmissionPolicies.

- device plugin: may patch only the Node its pod runs on (the node-name claim of its pod-bound
  token), and there only gpupack.io/ labels and annotations: another node, a taint, a foreign
  label, a token without a node are refused; on pods it may change only gpupack.io/devices,
  and only of pods bound to its node;
- extender: may change only the gpupack.io/devices (and placed-on) annotation of a pod, its spec
  only for gate mode's placement (tests/e2e/test_gate_mode.py), and write only its
  ledger ConfigMaps gpupack-node-<node> in its own namespace;
- the certificates Job is covered by test_extender_tls.py, which runs it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from gpupack import contract

from device_plugin import kube as plugin_kube
from scheduler_ext import binder, ledger

from . import accounts
from . import cluster as harness

pytestmark = pytest.mark.e2e

PLUGIN = "gpupack-device-plugin"
EXTENDER = "gpupack-extender"
TAINT = {"key": "e2e.gpupack.io/no-kubelet", "value": "true", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def access(cluster: harness.Cluster) -> list[dict[str, Any]]:
    return accounts.apply_access_objects(cluster)


@pytest.fixture
def two_nodes(cluster: harness.Cluster, group: str) -> Iterator[tuple[str, str]]:
    """Two Node objects with no kubelet behind them (tainted: nothing else lands there)."""
    names = (f"{group}-lp-a", f"{group}-lp-b")
    for name in names:
        cluster.core.create_node({"metadata": {"name": name, "labels": {harness.GROUP_LABEL: group}},
                                  "spec": {"taints": [TAINT]}})
    yield names
    for name in names:
        cluster.core.delete_node(name)


def inventory(node: str) -> contract.Inventory:
    gpus = tuple(contract.Gpu(id=f"GPU-{node}-{i}", index=i, vendor="nvidia", model="NVIDIA A100-SXM4-40GB",
                              memory_mib=40960) for i in range(2))
    return contract.Inventory(node, gpus)


def test_the_device_plugin_changes_only_its_own_node(
        cluster: harness.Cluster, access: list[dict[str, Any]], two_nodes: tuple[str, str], group: str) -> None:
    own, other = two_nodes
    with accounts.pod_token(cluster, PLUGIN, f"{group}-plugin", node=own) as token:
        as_plugin = accounts.client_for(cluster, token)
        # someone else's node: refused, with the policy's reason
        annotate = {"metadata": {"annotations": {contract.INVENTORY_ANNOTATION: "forged"}}}
        accounts.enforced(lambda: as_plugin.patch_node(other, annotate, dry_run="All"))
        status, body = accounts.refusal(lambda: as_plugin.patch_node(other, annotate))
        assert status == 403 and f"on {own} may not change node {other}" in body, body
        assert contract.INVENTORY_ANNOTATION not in (cluster.core.read_node(other).metadata.annotations or {})
        # its own node: the plugin's own publisher, as it runs
        publisher = plugin_kube.NodePublisher(as_plugin, own)
        publisher.publish(inventory(own))
        node = cluster.core.read_node(own)
        assert contract.decode_inventory(node.metadata.annotations[contract.INVENTORY_ANNOTATION]).node == own
        assert node.metadata.labels[contract.LABEL_COUNT] == "2"
        # ...but not its taints, its spec, or labels that are not ours
        status, body = accounts.refusal(lambda: as_plugin.patch_node(own, {"spec": {"taints": []}}))
        assert status == 403 and "may not change a Node's spec" in body, body
        status, body = accounts.refusal(lambda: as_plugin.patch_node(own, {"spec": {"unschedulable": True}}))
        assert status == 403, body
        status, body = accounts.refusal(lambda: as_plugin.patch_node(
            own, {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}}))
        assert status == 403 and "only gpupack.io/ labels" in body, body
        status, body = accounts.refusal(lambda: as_plugin.patch_node(
            own, {"metadata": {"annotations": {"node.alpha.kubernetes.io/ttl": "0"}}}))
        assert status == 403 and "only gpupack.io/ annotations" in body, body
        assert cluster.core.read_node(own).spec.taints[0].key == TAINT["key"]
        # pods: it reads its node's pods (field selector); it writes only gpupack.io/devices
        # on them (the truth after the fact, device_plugin/truth.py)
        listed = as_plugin.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={own}")
        assert [p.metadata.name for p in listed.items] == [f"{group}-plugin"]
        status, body = accounts.refusal(lambda: as_plugin.patch_namespaced_pod(
            f"{group}-plugin", accounts.NAMESPACE, {"metadata": {"labels": {"x": "y"}}}))
        assert status == 403 and "only the gpupack.io/devices annotation" in body, body
        devices = {"metadata": {"annotations": {contract.DEVICES_ANNOTATION: contract.encode_assignment({})}}}
        as_plugin.patch_namespaced_pod(f"{group}-plugin", accounts.NAMESPACE, devices, dry_run="All")
        with accounts.pod_token(cluster, PLUGIN, f"{group}-elsewhere", node=other):
            status, body = accounts.refusal(lambda: as_plugin.patch_namespaced_pod(
                f"{group}-elsewhere", accounts.NAMESPACE, devices))
            assert status == 403 and f"on {own} may not change pod" in body, body
    # a token that names no node (not bound to a pod) may change no node, not even "its" own
    as_unbound = accounts.client_for(cluster, accounts.unbound_token(cluster, PLUGIN))
    status, body = accounts.refusal(lambda: as_unbound.patch_node(own, annotate))
    assert status == 403 and "names no node" in body, body


def patch_pod(api: Any, namespace: str, body: dict[str, Any]) -> Any:
    return lambda: api.patch_namespaced_pod("target", namespace, body)


def test_the_extender_changes_only_the_devices_annotation_and_its_ledgers(
        cluster: harness.Cluster, access: list[dict[str, Any]], two_nodes: tuple[str, str], namespace: str,
        group: str) -> None:
    node = two_nodes[0]
    target = cluster.core.create_namespaced_pod(namespace, {
        "metadata": {"name": "target", "labels": {"app": "llm"}, "annotations": {"team": "a"}},
        "spec": {"schedulerName": "nobody", "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]}})
    other_cm = f"{group}-not-a-ledger"
    cluster.core.create_namespaced_config_map(accounts.NAMESPACE, {"metadata": {"name": other_cm}, "data": {"k": "v"}})
    try:
        with accounts.pod_token(cluster, EXTENDER, f"{group}-extender") as token:
            as_extender = accounts.client_for(cluster, token)
            # anything but gpupack.io/devices: refused (RBAC alone lets every field of every pod through)
            relabel = {"metadata": {"labels": {"app": "evil"}}}
            accounts.enforced(lambda: as_extender.patch_namespaced_pod("target", namespace, relabel, dry_run="All"))
            for forbidden in (relabel,
                              {"metadata": {"annotations": {"team": "b"}}},
                              {"metadata": {"annotations": {"gpupack.io/devices": "{}", "extra": "x"}}},
                              {"metadata": {"finalizers": ["example.com/hold"]}},
                              {"spec": {"activeDeadlineSeconds": 1}}):
                status, body = accounts.refusal(patch_pod(as_extender, namespace, forbidden))
                assert status == 403 and "may change only" in body and "annotation" in body, (forbidden, body)
            # the binder's own patch, then the Binding: accepted
            pods = binder.KubePodApi(as_extender)
            rv = pods.read_pod(namespace, "target")["metadata"]["resourceVersion"]
            value = contract.encode_assignment({"main": {contract.NVIDIA_GPU: [f"GPU-{node}-0"]}})
            pods.patch_pod_annotations(namespace, "target", rv, {contract.DEVICES_ANNOTATION: value})
            pods.create_binding(namespace, "target", target.metadata.uid, node)
            now = cluster.core.read_namespaced_pod("target", namespace)
            assert now.metadata.annotations == {"team": "a", contract.DEVICES_ANNOTATION: value}
            assert now.metadata.labels == {"app": "llm"} and now.spec.node_name == node
            # its ledgers, through the ledger's own API code: create, read, replace
            ledgers = ledger.KubeLedgerApi(as_extender, accounts.NAMESPACE)
            name = f"gpupack-node-{node}"
            ledgers.create(name, {"claims": "{}"})
            data, version = ledgers.read(name) or ({}, "")
            ledgers.replace(name, {"claims": json.dumps({"x": 1})}, version)
            assert (ledgers.read(name) or ({}, ""))[0] == {"claims": '{"x": 1}'}
            # ...and no other ConfigMap of its namespace (coredns, kube-proxy's, ...)
            status, body = accounts.refusal(lambda: as_extender.create_namespaced_config_map(
                accounts.NAMESPACE, {"metadata": {"name": "coredns"}, "data": {"Corefile": "."}}))
            assert status == 403 and "only its ledger ConfigMaps" in body, body
            status, body = accounts.refusal(lambda: as_extender.replace_namespaced_config_map(
                other_cm, accounts.NAMESPACE, {"metadata": {"name": other_cm}, "data": {"k": "evil"}}))
            assert status == 403 and "only its ledger ConfigMaps" in body, body
            # nor any ConfigMap elsewhere (RBAC: a Role in its namespace only)
            status, _ = accounts.refusal(lambda: as_extender.create_namespaced_config_map(
                namespace, {"metadata": {"name": f"gpupack-node-{node}"}}))
            assert status == 403
            # and it reads no Secrets
            status, _ = accounts.refusal(lambda: as_extender.list_namespaced_secret(accounts.NAMESPACE))
            assert status == 403
    finally:
        for cm in (other_cm, f"gpupack-node-{node}"):
            with contextlib.suppress(Exception):
                cluster.core.delete_namespaced_config_map(cm, accounts.NAMESPACE)
