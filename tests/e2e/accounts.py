"""The chart's ServiceAccounts, RBAC and admission policies on the real API server, and clients
that act as those accounts with real tokens.

What an operator applies (``deploy/manifests``, the chart rendered) is applied here for real,
but only its access objects: ServiceAccounts, (Cluster)Roles and their bindings,
ValidatingAdmissionPolicies and their bindings; no controller runs to act on Deployments or
Jobs. A token comes from the TokenRequest API bound to a Pod of the account's own (a pod bound
to a node gives the token the ``authentication.kubernetes.io/node-name`` claim the device
plugin's policy checks), as the kubelet gets one for a projected service account volume.
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from . import cluster as harness

MANIFESTS = harness.REPO / "deploy" / "manifests"
NAMESPACE = "kube-system"
ACCESS_KINDS = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
#: How long a new admission policy may take to be enforced (its informer's sync).
POLICY_READY_S = 30.0


def manifest_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(MANIFESTS.glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict)]


def rendered_docs(*values: str) -> list[dict[str, Any]]:
    """The chart as deploy/render.sh renders deploy/manifests (tls.certificates=job), with
    ``values`` (``--set`` ...) on top: for a test of a mode the manifests do not ship."""
    helm = subprocess.run(["bash", str(harness.REPO / "tools/helm/build.sh")], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    out = subprocess.run([helm, "template", "gpupack", str(harness.REPO / "deploy/helm/gpupack"), "--namespace",
                          NAMESPACE, "--kube-version", "1.37.2", "--set", "tls.certificates=job", *values],
                         check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if isinstance(d, dict)]


def apply_access_objects(cluster: harness.Cluster) -> list[dict[str, Any]]:
    """Applies the manifests' access objects for real (idempotent); returns them."""
    docs = [d for d in manifest_docs() if d["kind"] in ACCESS_KINDS]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return docs


def client_for(cluster: harness.Cluster, token: str) -> Any:
    """A CoreV1Api that authenticates with ``token`` (and nothing else)."""
    from kubernetes import client

    config = client.Configuration()
    config.host = cluster.server
    config.ssl_ca_cert = str(cluster.pki.ca)
    config.api_key = {"authorization": token}
    config.api_key_prefix = {"authorization": "Bearer"}
    return client.CoreV1Api(client.ApiClient(config))


def token_kubeconfig(cluster: harness.Cluster, token: str, path: pathlib.Path) -> pathlib.Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki.ca)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "sa"}}],
        "current-context": "e2e",
    }))
    return path


@contextlib.contextmanager
def pod_token(cluster: harness.Cluster, account: str, pod_name: str, node: str | None = None) -> Iterator[str]:
    """A token of ServiceAccount ``account`` (kube-system) bound to a Pod of its own, which is
    bound to ``node`` when given (no kubelet runs it: it exists for the token's claims)."""
    core = cluster.core
    spec: dict[str, Any] = {"serviceAccountName": account, "terminationGracePeriodSeconds": 0,
                            "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}],
                            "tolerations": [{"operator": "Exists"}]}
    if node:
        spec["nodeName"] = node
    pod = core.create_namespaced_pod(NAMESPACE, {"metadata": {"name": pod_name}, "spec": spec})
    try:
        yield core.create_namespaced_service_account_token(account, NAMESPACE, {"spec": {
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod.metadata.uid},
            "expirationSeconds": 3600}}).status.token
    finally:
        core.delete_namespaced_pod(pod_name, NAMESPACE, grace_period_seconds=0)


def unbound_token(cluster: harness.Cluster, account: str) -> str:
    """A token of the account bound to nothing: no pod, no node in its claims."""
    return str(cluster.core.create_namespaced_service_account_token(
        account, NAMESPACE, {"spec": {"expirationSeconds": 3600}}).status.token)


def refusal(call: Callable[[], Any]) -> tuple[int, str]:
    """The status and message of the API error ``call`` raises (it must raise one)."""
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as err:
        return int(err.status), str(err.body)
    raise AssertionError("the API server accepted a write it must refuse")


def mutated(dry_run: Callable[[], bool], timeout_s: float = POLICY_READY_S) -> None:
    """Waits until a new MutatingAdmissionPolicy is in force: ``dry_run`` creates an object as a
    dry run and says whether admission changed it. The same readiness polling as :func:`enforced`."""
    deadline = time.monotonic() + timeout_s
    while not dry_run():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not mutated {timeout_s}s after the policy was applied")
        time.sleep(0.2)


def enforced(dry_run: Callable[[], Any], timeout_s: float = POLICY_READY_S) -> tuple[int, str]:
    """Waits until a write the policies refuse is refused, tried as a dry run (admission runs,
    nothing is stored); returns the refusal. The API server enforces a new
    ValidatingAdmissionPolicy once its informer has it: readiness polling with a deadline, as
    for a process's health endpoint."""
    from kubernetes.client.exceptions import ApiException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            dry_run()
        except ApiException as err:
            return int(err.status), str(err.body)
        if time.monotonic() > deadline:
            raise AssertionError(f"still accepted {timeout_s}s after the policies were applied")
        time.sleep(0.2)
