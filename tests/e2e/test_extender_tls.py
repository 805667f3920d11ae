"""Authenticated by default (issue 15, item 2): the real kube-scheduler schedules a GPU pod
through an extender that serves TLS and demands its client certificate, everything as the
shipped manifests (``deploy/manifests``, the chart rendered, in extender mode) configure it.

1. The certificates Job's command (``gpupack-extender certs``, its arguments from the
   manifests) runs with a token of the Job's own ServiceAccount and makes the three Secrets;
   that account cannot write any other Secret (the chart's admission policy) or read one.
2. A gpupack-extender runs with the Deployment's environment (TLS files, client CA), its
   Secret's files in place of the volume, and its ServiceAccount's token.
3. A kube-scheduler runs with the chart's configuration (profile gpupack-scheduler, the
   extender entries with their ``tlsConfig``), the Secrets' files in place of its volumes,
   its ServiceAccount's token; only the address changes (loopback), with ``serverName`` set to
   the Service's name, which the serving certificate must carry.
4. A GPU pod for gpupack-scheduler runs with its devices annotated; meanwhile a bind without a
   client certificate is refused (403) and one with another CA's fails the handshake, while
   /metrics stays open.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import json
import pathlib
import re
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gpupack import contract
from scheduler_ext import certs

from . import accounts
from . import cluster as harness
from . import workloads

pytestmark = pytest.mark.e2e

SCHEDULER = "gpupack-scheduler"
SERVICE_NAME = "gpupack-extender.kube-system.svc"
SECRETS = ("gpupack-extender-ca", "gpupack-extender-tls", "gpupack-scheduler-client-tls")


@functools.cache
def extender_mode_docs() -> list[dict[str, Any]]:
    """deploy/manifests as they would be in extender mode (they ship gate mode, Kubernetes 1.36+)."""
    return accounts.rendered_docs("--set", "extender.placement=extender")


def manifest(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in extender_mode_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def write_secret(cluster: harness.Cluster, name: str, folder: pathlib.Path) -> pathlib.Path:
    """A Secret's keys as files, as its volume would hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, value in (cluster.core.read_namespaced_secret(name, accounts.NAMESPACE).data or {}).items():
        (folder / key).write_bytes(base64.b64decode(value))
    return folder


def https(port: int, ctx: ssl.SSLContext, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def trusting(ca: pathlib.Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False  # loopback: the certificate names the Service (checked by kube-scheduler)
    return ctx


@pytest.fixture
def secrets_cleanup(cluster: harness.Cluster) -> Iterator[None]:
    for name in SECRETS:
        with contextlib.suppress(Exception):
            cluster.core.delete_namespaced_secret(name, accounts.NAMESPACE)
    yield
    for name in SECRETS:
        with contextlib.suppress(Exception):
            cluster.core.delete_namespaced_secret(name, accounts.NAMESPACE)


def run_certificates_job(cluster: harness.Cluster, stack: contextlib.ExitStack, group: str) -> None:
    job = manifest("Job", "gpupack-certs")["spec"]["template"]["spec"]
    command = job["containers"][0]["command"]
    assert command[:2] == ["gpupack-extender", "certs"]
    token = stack.enter_context(accounts.pod_token(cluster, job["serviceAccountName"], f"{group}-certs"))
    as_job = accounts.client_for(cluster, token)
    # the policy admits no other Secret: not a token for another ServiceAccount
    forged = {"metadata": {"name": "forged", "annotations": {"kubernetes.io/service-account.name": "gpupack-extender"}},
              "type": "kubernetes.io/service-account-token"}
    status, body = accounts.enforced(lambda: as_job.create_namespaced_secret(accounts.NAMESPACE, forged, dry_run="All"))
    assert status == 403 and "may write only the kubernetes.io/tls Secrets" in body, body
    status, _ = accounts.refusal(lambda: as_job.read_namespaced_secret("forged", accounts.NAMESPACE))
    assert status == 403  # RBAC: get only its three Secrets
    assert certs.main(command[2:], core_v1=as_job) == 0
    made = {n: cluster.core.read_namespaced_secret(n, accounts.NAMESPACE) for n in SECRETS}
    assert {s.type for s in made.values()} == {"kubernetes.io/tls"}
    # a second run (the next apply) leaves them as they are
    assert certs.main(command[2:], core_v1=as_job) == 0
    again = {n: cluster.core.read_namespaced_secret(n, accounts.NAMESPACE).metadata.resource_version for n in SECRETS}
    assert again == {n: s.metadata.resource_version for n, s in made.items()}


def start_extender(cluster: harness.Cluster, stack: contextlib.ExitStack, group: str,
                   files: pathlib.Path) -> tuple[harness.Process, int]:
    deployment = manifest("Deployment", "gpupack-extender")["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    port = harness.free_port()
    from_fields = {"metadata.namespace": accounts.NAMESPACE, "metadata.name": f"{group}-extender-0"}
    env: dict[str, str] = {}
    for e in container["env"]:
        value = e["value"] if "value" in e else from_fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        env[e["name"]] = value.replace(mount, str(files))
    assert env["GPUPACK_EXTENDER_TLS_CLIENT_CA"] == str(files / "ca.crt")
    env["GPUPACK_EXTENDER_LISTEN"] = f"127.0.0.1:{port}"
    token = stack.enter_context(accounts.pod_token(cluster, deployment["serviceAccountName"], f"{group}-extender"))
    kubeconfig = accounts.token_kubeconfig(cluster, token, cluster.work / f"{group}-extender.kubeconfig")
    proc = harness.Process(f"gpupack-extender-tls-{group}", [*[harness.console_script(c) for c in container["command"]],
                                                             f"--kubeconfig={kubeconfig}"], cluster.logs, env=env)
    cluster.processes.append(proc)
    stack.callback(cluster.processes.remove, proc)
    stack.callback(proc.stop)
    proc.start()
    ctx = trusting(files / "ca.crt")  # /readyz needs no client certificate, as for the kubelet's probe
    harness.wait_ready(proc, lambda: harness.http_ok(f"https://127.0.0.1:{port}/readyz", ctx), "TLS extender /readyz")
    return proc, port


def start_scheduler(cluster: harness.Cluster, stack: contextlib.ExitStack, group: str, port: int,
                    folder: pathlib.Path) -> harness.Process:
    rendered = manifest("ConfigMap", SCHEDULER)["data"]["kube-scheduler-config.yaml"]
    config = yaml.safe_load(rendered)
    deployment = manifest("Deployment", SCHEDULER)["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    volumes = {v["name"]: v for v in deployment["volumes"]}
    mounts = {}  # the chart's mounted path -> the Secret's key as a file here
    for m in container["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        for item in (secret or {}).get("items", []):
            mounts[f"{m['mountPath']}/{item['path']}"] = write_secret(cluster, secret["secretName"],
                                                                      folder / secret["secretName"]) / item["key"]
    assert config["profiles"][0]["schedulerName"] == SCHEDULER
    for extender in config["extenders"]:
        assert extender["urlPrefix"] == f"https://{SERVICE_NAME}:8888"
        extender["urlPrefix"] = f"https://127.0.0.1:{port}"
        tls = extender["tlsConfig"]
        assert set(tls) == {"caFile", "certFile", "keyFile"}
        extender["tlsConfig"] = {k: str(mounts[v]) for k, v in tls.items()} | {"serverName": SERVICE_NAME}
    token = stack.enter_context(accounts.pod_token(cluster, deployment["serviceAccountName"], f"{group}-scheduler"))
    config["clientConnection"]["kubeconfig"] = str(
        accounts.token_kubeconfig(cluster, token, cluster.work / f"{group}-scheduler.kubeconfig"))
    config["leaderElection"] = {"leaderElect": False}
    path = cluster.work / f"{group}-scheduler-tls.yaml"
    path.write_text(yaml.safe_dump(config))
    sched_port = harness.free_port()
    proc = harness.Process(f"kube-scheduler-tls-{group}", [
        str(cluster.bin / "kube-scheduler"), f"--config={path}", "--bind-address=127.0.0.1",
        f"--secure-port={sched_port}", f"--cert-dir={cluster.work / f'{group}-scheduler-certs'}", "--v=2"],
        cluster.logs)
    cluster.processes.append(proc)
    stack.callback(cluster.processes.remove, proc)
    stack.callback(proc.stop)
    proc.start()
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # its own self-signed serving cert; /readyz is public
    harness.wait_ready(proc, lambda: harness.http_ok(f"https://127.0.0.1:{sched_port}/readyz", insecure),
                       "kube-scheduler (TLS) /readyz")
    return proc


def metric(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_kube_scheduler_schedules_through_the_mutual_tls_extender(
        cluster: harness.Cluster, group: str, namespace: str, secrets_cleanup: None, tmp_path: pathlib.Path) -> None:
    accounts.apply_access_objects(cluster)
    with contextlib.ExitStack() as stack:
        run_certificates_job(cluster, stack, group)
        files = write_secret(cluster, "gpupack-extender-tls", tmp_path / "extender-tls")
        extender, port = start_extender(cluster, stack, group, files)
        start_scheduler(cluster, stack, group, port, tmp_path / "scheduler")

        node = cluster.add_node(f"{group}-tls", group, workloads.nvswitch_machine(f"{group}-tls", count=2))
        node.wait_allocatable({contract.NVIDIA_GPU: 2})
        body = workloads.gpu_pod("through-tls", group, {contract.NVIDIA_GPU: 1})
        body["spec"]["schedulerName"] = SCHEDULER
        cluster.core.create_namespaced_pod(namespace, body)
        pods = cluster.wait_pods(namespace, workloads.all_running(namespace, ["through-tls"]),
                                 "the GPU pod Running, scheduled through the TLS extender", timeout_s=120)
        pod = pods[f"{namespace}/through-tls"]
        assert contract.DEVICES_ANNOTATION in (pod.metadata.annotations or {})
        workloads.check_allocations(cluster, [pod], exact=False)

        # the same port, without kube-scheduler's certificate
        anonymous = trusting(files / "ca.crt")
        uid = pod.metadata.uid
        bind = json.dumps({"PodName": "through-tls", "PodNamespace": namespace, "PodUID": uid,
                           "Node": f"{group}-tls"}).encode()
        status, text = https(port, anonymous, "POST", "/bind", bind)
        assert status == 403 and b"client certificate required" in text, text
        status, text = https(port, anonymous, "GET", "/metrics")
        assert status == 200
        exposition = text.decode()
        assert metric(exposition, 'gpupack_extender_decisions_total{result="ok",verb="bind"}') >= 1, exposition[:2000]
        assert metric(exposition, 'gpupack_extender_http_refused_total{status="403"}') >= 1
        # a certificate of another CA: no handshake at all
        stranger = certs.new_ca()
        crt, key = certs.issue(stranger, certs.CLIENT_NAME, server=False).pem()
        (tmp_path / "stranger.crt").write_bytes(crt)
        (tmp_path / "stranger.key").write_bytes(key)
        foreign = trusting(files / "ca.crt")
        foreign.load_cert_chain(str(tmp_path / "stranger.crt"), str(tmp_path / "stranger.key"))
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            https(port, foreign, "POST", "/bind", bind)
        cluster.check_processes()
        assert extender.running
