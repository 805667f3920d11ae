"""A real control plane on loopback for gpupack's end-to-end tests, and simulated GPU nodes.

Role in the whole: the only place that starts processes for the e2e tests. It runs the
programs we do not write (etcd, kube-apiserver, kube-scheduler and, for DRA, the
kube-controller-manager's resource claim controller, built from their Go modules by
``build_control_plane.sh``), the node agent (the kubelet's device manager and DRA manager,
``go/nodeagent``) and ours (``gpupack-device-plugin`` or ``gpupack-dra-driver``,
``gpupack-extender``), each as a separate process talking the real wire formats; tests only
watch and change API objects and read what the node agent recorded.

Readiness is waited for by polling health endpoints with a deadline (the only polling here);
everything else is waited for with API watches (see :meth:`Cluster.wait_pods`,
:meth:`Cluster.wait_node`) or inotify-free file reads after a watched event.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import ipaddress
import json
import os
import pathlib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_SCRIPT = HERE / "build_control_plane.sh"
SCHEDULER_CONFIG = REPO / "deploy" / "scheduler" / "kube-scheduler-config.yaml"
DEVICE_CLASSES = REPO / "deploy" / "dra" / "deviceclasses.yaml"
#: label put on every simulated node; tests select their own group with it
GROUP_LABEL = "e2e.gpupack.io/group"
READY_TIMEOUT_S = 60.0


class E2EError(RuntimeError):
    """The harness could not bring something up; the message says what and where its log is."""


# --- binaries ---------------------------------------------------------------------------------


def build_binaries() -> pathlib.Path:
    """Runs the (cached) build; returns the folder with etcd, kube-*, kubectl and nodeagent."""
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    if proc.returncode != 0:
        raise E2EError(f"{BUILD_SCRIPT} failed with exit code {proc.returncode}")
    folder = pathlib.Path(proc.stdout.strip().splitlines()[-1])
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "nodeagent"):
        if not os.access(folder / name, os.X_OK):
            raise E2EError(f"{BUILD_SCRIPT} did not produce {folder / name}")
    return folder


def console_script(name: str) -> str:
    """A console script of this distribution, from the interpreter's own environment first."""
    beside = pathlib.Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise E2EError(f"{name} is not installed (pip install -e .)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pki:
    """A throwaway CA, the API server's serving certificate, client certificates and SA keys."""

    folder: pathlib.Path

    @property
    def ca(self) -> pathlib.Path:
        return self.folder / "ca.crt"

    def cert(self, name: str) -> pathlib.Path:
        return self.folder / f"{name}.crt"

    def key(self, name: str) -> pathlib.Path:
        return self.folder / f"{name}.key"


def _write_key(path: pathlib.Path, key: Any) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def make_pki(folder: pathlib.Path, clients: Mapping[str, tuple[str, Sequence[str]]]) -> Pki:
    """CA + ``apiserver`` serving cert for 127.0.0.1/localhost + one client cert per entry
    ``name -> (common name = user, organizations = groups)`` + ``sa.key``/``sa.pub``."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpupack-e2e-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, subject: x509.Name, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(folder / f"{name}.key", key)

    issue("apiserver", x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]), server=True)
    for name, (user, groups) in clients.items():
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        issue(name, x509.Name(attrs), server=False)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(folder / "sa.key", sa_key)
    (folder / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return Pki(folder)


def write_kubeconfig(path: pathlib.Path, server: str, pki: Pki, client: str) -> pathlib.Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": str(pki.ca)}}],
        "users": [
            {"name": client, "user": {"client-certificate": str(pki.cert(client)), "client-key": str(pki.key(client))}}
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": client}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config))
    return path


# --- processes --------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when pytest itself dies (Linux), so no program of a
    killed test run is left behind; teardown covers every other way out."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """One program of the cluster, with its log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: pathlib.Path, env: Mapping[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log = log_dir / f"{name}.log"
        self.env = dict(os.environ, **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected = False  # True from start() to stop(): it should be running

    def start(self) -> Process:
        self.expected = True
        log = self.log.open("ab")
        log.write(f"\n=== start: {' '.join(self.argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        """Stops the process; returns its exit code (None when it was not running)."""
        self.expected = False
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return f"(no log {self.log})"
        return f"--- {self.name} ({self.log}), last {lines} lines:\n" + "\n".join(text[-lines:])


def wait_ready(proc: Process, probe: Callable[[], bool], what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Polls ``probe`` until it is true (process readiness only); fails fast if the process dies."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not proc.running:
            raise E2EError(f"{proc.name} exited before {what}\n{proc.tail()}")
        with contextlib.suppress(OSError, urllib.error.URLError, ssl.SSLError, ValueError):
            if probe():
                return
        time.sleep(0.1)  # readiness polling interval, not synchronisation
    raise E2EError(f"{proc.name}: {what} not reached within {timeout_s}s\n{proc.tail()}")


def wait_self_signed(proc: Process, url: str) -> None:
    """Waits for a component's public health endpoint served with its own self-signed
    certificate (kube-scheduler, kube-controller-manager: nothing to verify it against)."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    wait_ready(proc, lambda: http_ok(url, insecure), f"{proc.name} {url.rsplit('/', 1)[-1]}")


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError:
        return False


# --- the cluster ------------------------------------------------------------------------------


class Cluster:
    """etcd + kube-apiserver + kube-scheduler (deploy/ config) + gpupack-extender, on loopback.

    With ``dra``: also kube-controller-manager running only its resource claim controller
    (ResourceClaimTemplate -> ResourceClaim per pod), the DeviceClasses of deploy/dra/, and the
    extender with ``--dra``; nodes are then added with :meth:`add_dra_node`."""

    def __init__(self, bin_dir: pathlib.Path, work: pathlib.Path, dra: bool = False):
        self.bin = bin_dir
        self.work = work
        self.dra = dra
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[Process] = []
        self.nodes: dict[str, SimNode] = {}
        self.pki = make_pki(
            work / "pki",
            {
                "admin": ("gpupack-e2e-admin", ["system:masters"]),
                "scheduler": ("system:kube-scheduler", []),
            },
        )
        self.api_port = free_port()
        self.server = f"https://127.0.0.1:{self.api_port}"
        self.admin_kubeconfig = write_kubeconfig(work / "admin.kubeconfig", self.server, self.pki, "admin")
        self.scheduler_kubeconfig = write_kubeconfig(work / "scheduler.kubeconfig", self.server, self.pki, "scheduler")
        self.extender_port = free_port()
        self.extender_url = f"http://127.0.0.1:{self.extender_port}"
        self._ssl = ssl.create_default_context(cafile=str(self.pki.ca))
        self._ssl.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        self.etcd: Process | None = None
        self.apiserver: Process | None = None
        self.scheduler: Process | None = None
        self.controller_manager: Process | None = None
        self.extender: Process | None = None
        self._core: Any = None
        self._resource: Any = None

    # -- start and stop

    def _add(self, proc: Process) -> Process:
        self.processes.append(proc)
        return proc.start()

    def start(self) -> Cluster:
        client_port, peer_port = free_port(), free_port()
        self.etcd = self._add(
            Process(
                "etcd",
                [
                    str(self.bin / "etcd"),
                    "--name=e2e",
                    f"--data-dir={self.work / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{client_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{client_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                    f"--initial-cluster=e2e=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync=true",  # test data; an fsync per write only slows the tests
                    "--log-level=warn",
                ],
                self.logs,
            )
        )
        wait_ready(self.etcd, lambda: http_ok(f"http://127.0.0.1:{client_port}/health"), "etcd /health")

        pki = self.pki
        self.apiserver = self._add(
            Process(
                "kube-apiserver",
                [
                    str(self.bin / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{client_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.api_port}",
                    f"--cert-dir={self.work / 'apiserver-certs'}",
                    f"--tls-cert-file={pki.cert('apiserver')}",
                    f"--tls-private-key-file={pki.key('apiserver')}",
                    f"--client-ca-file={pki.ca}",
                    f"--service-account-key-file={pki.folder / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki.folder / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--authorization-mode=Node,RBAC",
                    # No kube-controller-manager runs: nothing would create ServiceAccounts, and
                    # nothing would lift the not-ready taint TaintNodesByCondition puts on new nodes.
                    "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
                    # the "kubernetes" Service's endpoint would be 127.0.0.1, which is refused
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                ],
                self.logs,
            )
        )
        wait_ready(self.apiserver, lambda: http_ok(f"{self.server}/readyz", self._ssl), "kube-apiserver /readyz")

        if self.dra:
            self.start_controller_manager()
            self.kubectl("apply", f"--filename={DEVICE_CLASSES}")
        self.start_extender()
        self.start_scheduler()
        return self

    def scheduler_config(self) -> dict[str, Any]:
        """deploy/scheduler/kube-scheduler-config.yaml with only what a test cluster must change."""
        config = yaml.safe_load(SCHEDULER_CONFIG.read_text())
        config["clientConnection"]["kubeconfig"] = str(self.scheduler_kubeconfig)
        config["leaderElection"] = {"leaderElect": False}
        for extender in config["extenders"]:
            extender["urlPrefix"] = self.extender_url
            # the session's extender serves plain HTTP; test_extender_tls.py runs one with TLS
            extender.pop("tlsConfig", None)
        return dict(config)

    def start_scheduler(self) -> None:
        path = self.work / "kube-scheduler-config.yaml"
        path.write_text(yaml.safe_dump(self.scheduler_config()))
        port = free_port()
        self.scheduler = self._add(
            Process(
                "kube-scheduler",
                [
                    str(self.bin / "kube-scheduler"),
                    f"--config={path}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--cert-dir={self.work / 'scheduler-certs'}",
                    "--v=2",
                ],
                self.logs,
            )
        )
        wait_self_signed(self.scheduler, f"https://127.0.0.1:{port}/readyz")

    def start_controller_manager(self) -> None:
        """kube-controller-manager with the one controller DRA pods need: resourceclaim-controller
        creates each pod's ResourceClaims from its templates, records them in the pod's status,
        and deletes them (or drops the reservation) when the pod is gone."""
        port = free_port()
        self.controller_manager = self._add(
            Process(
                "kube-controller-manager",
                [
                    str(self.bin / "kube-controller-manager"),
                    f"--kubeconfig={self.admin_kubeconfig}",
                    "--controllers=resourceclaim-controller",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={port}",
                    f"--cert-dir={self.work / 'controller-manager-certs'}",
                    "--v=2",
                ],
                self.logs,
            )
        )
        wait_self_signed(self.controller_manager, f"https://127.0.0.1:{port}/healthz")

    def start_extender(self) -> None:
        if self.extender is not None and self.extender.running:
            return
        if self.extender is None:
            self.extender = Process(
                "gpupack-extender",
                [
                    console_script("gpupack-extender"),
                    f"--kubeconfig={self.admin_kubeconfig}",
                    f"--listen=127.0.0.1:{self.extender_port}",
                    "--allow-unauthenticated",  # plain HTTP on loopback; test_extender_tls.py runs it as shipped
                    *(["--dra"] if self.dra else []),
                ],
                self.logs,
            )
            self.processes.append(self.extender)
        self.extender.start()
        wait_ready(self.extender, lambda: http_ok(f"{self.extender_url}/readyz"), "gpupack-extender /readyz")

    def stop_extender(self) -> None:
        if self.extender is not None:
            self.extender.stop()

    def close(self) -> None:
        for node in list(self.nodes.values()):
            node.close(delete=False)
        for proc in reversed(self.processes):
            proc.stop()

    def check_processes(self) -> None:
        """Fails with the logs when a program that should be running has exited."""
        procs = [p for p in self.processes if p.expected] + [
            p for n in self.nodes.values() for p in (n.agent, n.plugin) if p.expected
        ]
        dead = [p for p in procs if not p.running]
        if dead:
            raise AssertionError(
                "exited unexpectedly: " + ", ".join(p.name for p in dead) + "\n" + "\n".join(p.tail(40) for p in dead)
            )

    def tails(self) -> str:
        procs = self.processes + [p for n in self.nodes.values() for p in (n.agent, n.plugin)]
        return "\n".join(p.tail(25) for p in procs)

    # -- API access

    @property
    def core(self) -> Any:
        """kubernetes.client.CoreV1Api as the cluster admin."""
        if self._core is None:
            from kubernetes import client, config

            api_client = config.new_client_from_config(config_file=str(self.admin_kubeconfig))  # type: ignore[no-untyped-call]
            self._core = client.CoreV1Api(api_client)
        return self._core

    @property
    def resource(self) -> Any:
        """kubernetes.client.ResourceV1Api (resource.k8s.io/v1) as the cluster admin."""
        if self._resource is None:
            from kubernetes import client

            self._resource = client.ResourceV1Api(self.core.api_client)
        return self._resource

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.admin_kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def watch_until(
        self,
        list_fn: Callable[..., Any],
        done: Callable[[dict[str, Any]], Any],
        timeout_s: float,
        what: str,
        describe: Callable[[dict[str, Any]], str] | None = None,
        **list_kwargs: Any,
    ) -> Any:
        """Lists objects, then watches them until ``done(objects by name)`` returns something truthy.

        ``objects`` maps ``namespace/name`` (or ``name``) to the object as the API returns it.
        Returns what ``done`` returned; raises AssertionError on timeout, with ``describe(objects)``
        (the last state, in a few lines) first and the programs' log tails after it.
        """
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout_s
        objects: dict[str, Any] = {}

        def key(obj: Any) -> str:
            ns = obj.metadata.namespace
            return f"{ns}/{obj.metadata.name}" if ns else str(obj.metadata.name)

        listed = list_fn(**list_kwargs)
        for obj in listed.items:
            objects[key(obj)] = obj
        result = done(objects)
        version = listed.metadata.resource_version
        while not result:
            left = deadline - time.monotonic()
            if left <= 0:
                state = describe(objects) if describe is not None else ""
                raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{state}\n{self.tails()}")
            self.check_processes()
            w = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                # watch in slices of a few seconds, so a program that died fails the test at once
                for event in w.stream(  # type: ignore[no-untyped-call]
                    list_fn, resource_version=version, timeout_seconds=max(1, min(5, int(left))),
                    allow_watch_bookmarks=False, **list_kwargs
                ):
                    if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                        listed = list_fn(**list_kwargs)
                        objects = {key(o): o for o in listed.items}
                        version = listed.metadata.resource_version
                        result = done(objects)
                        break
                    obj = event["object"]
                    version = obj.metadata.resource_version
                    if event["type"] == "DELETED":
                        objects.pop(key(obj), None)
                    else:
                        objects[key(obj)] = obj
                    result = done(objects)
                    if result:
                        break
            except ApiException as err:
                if err.status != 410:
                    raise
                listed = list_fn(**list_kwargs)
                objects = {key(o): o for o in listed.items}
                version = listed.metadata.resource_version
                result = done(objects)
            finally:
                w.stop()  # type: ignore[no-untyped-call]
        return result

    def wait_pods(
        self, namespace: str, done: Callable[[dict[str, Any]], Any], what: str, timeout_s: float = 120.0
    ) -> Any:
        return self.watch_until(self.core.list_namespaced_pod, done, timeout_s, what,
                                describe=lambda pods: self.describe_unready(namespace, pods), namespace=namespace)

    def describe_unready(self, namespace: str, pods: Mapping[str, Any]) -> str:
        """One line per pod that is not Running (phase, node, why not scheduled) and its last
        three events: what a timeout message needs first."""
        lines = []
        for key, pod in sorted(pods.items()):
            if pod.status.phase == "Running":
                continue
            why = "; ".join(f"{c.type}={c.status} {c.reason or ''}: {c.message or ''}"
                            for c in pod.status.conditions or [] if c.status != "True")
            lines.append(f"  {key}: {pod.status.phase} on {pod.spec.node_name or '(no node)'} {why}")
            try:
                events = self.core.list_namespaced_event(
                    namespace, field_selector=f"involvedObject.name={pod.metadata.name}").items
            except Exception as err:  # the API server may be the problem: say so and go on
                lines.append(f"    (events not read: {err})")
                continue
            events.sort(key=lambda e: int(e.metadata.resource_version))
            lines += [f"    {e.type} {e.reason} x{e.count or 1}: {e.message}" for e in events[-3:]]
        running = len(pods) - sum(1 for p in pods.values() if p.status.phase != "Running")
        return f"{running} of {len(pods)} pods Running; the others:\n" + "\n".join(lines[:200])

    def wait_node(self, name: str, done: Callable[[Any], Any], what: str, timeout_s: float = 60.0) -> Any:
        """Waits (watch) until ``done(node)`` is truthy; returns the node."""
        return self.watch_until(
            self.core.list_node,
            lambda nodes: nodes[name] if name in nodes and done(nodes[name]) else None,
            timeout_s,
            f"node {name}: {what}",
            field_selector=f"metadata.name={name}",
        )

    def wait_event(self, namespace: str, pod: str, reason: str, timeout_s: float = 60.0) -> Any:
        """Waits (watch) for an Event about ``pod`` with ``reason`` (e.g. the scheduler's
        FailedScheduling); returns the newest such event."""

        def found(events: dict[str, Any]) -> Any:
            hits = [e for e in events.values() if e.reason == reason]
            return max(hits, key=lambda e: int(e.metadata.resource_version)) if hits else None

        return self.watch_until(
            self.core.list_namespaced_event, found, timeout_s, f"event {reason} for {namespace}/{pod}",
            namespace=namespace, field_selector=f"involvedObject.name={pod}",
        )

    # -- nodes

    def add_node(
        self, name: str, group: str, inventory: Mapping[str, Any], plugin_args: Sequence[str] = ()
    ) -> SimNode:
        """Starts a node agent and a device plugin with the fake ``inventory`` (the fake
        backend's file format: ``{"gpus": [...], ...}``)."""
        node = SimNode(self, name, group, inventory, plugin_args)
        self.nodes[name] = node
        node.start()
        return node

    def add_dra_node(
        self, name: str, group: str, inventory: Mapping[str, Any], driver_args: Sequence[str] = ()
    ) -> SimNode:
        """Starts a node agent with its DRA manager and a gpupack-dra-driver with the fake
        ``inventory``; returns once the driver has published the node's ResourceSlices."""
        if not self.dra:
            raise E2EError("add_dra_node needs a cluster started with dra=True")
        node = SimNode(self, name, group, inventory, driver_args, dra=True)
        self.nodes[name] = node
        node.start()
        node.wait_slices(lambda devices: len(devices) > 0, "the driver's first ResourceSlices")
        return node


AGENT_CONDITION = "GpupackNodeAgent"
#: the gpupack DRA driver's name (gpupack/dra_names.py)
DRIVER = "gpu.gpupack.io"


def agent_state(node: Any) -> dict[str, Any] | None:
    """The node agent's own state from its Node condition (see go/nodeagent), or None."""
    for c in node.status.conditions or []:
        if c.type == AGENT_CONDITION:
            return dict(json.loads(c.message))
    return None


class SimNode:
    """One simulated GPU node, in a folder of its own: the node agent (kubelet device manager)
    + a gpupack-device-plugin with the fake backend or, with ``dra``, the node agent with its
    DRA manager + a gpupack-dra-driver with the fake backend (``plugin`` is then the driver)."""

    def __init__(
        self, cluster: Cluster, name: str, group: str, inventory: Mapping[str, Any], plugin_args: Sequence[str],
        dra: bool = False,
    ):
        self.cluster = cluster
        self.name = name
        self.group = group
        self.dra = dra
        self.folder = cluster.work / "nodes" / name
        self.plugin_dir = self.folder / "device-plugins"
        self.record_dir = self.folder / "records"
        self.registry_dir = self.folder / "plugins_registry"
        self.dra_data_dir = self.folder / "plugins" / "gpu.gpupack.io"
        self.cdi_dir = self.folder / "cdi"
        self.inventory_file = self.folder / "inventory.json"
        self.pod_resources_socket = self.folder / "pod-resources" / "kubelet.sock"
        self.metrics_url = f"http://127.0.0.1:{free_port()}/metrics"
        for d in (self.plugin_dir, self.record_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.machine = {k: v for k, v in inventory.items() if k != "gpus"}
        self.gpus = [dict(g) for g in inventory["gpus"]]
        self.write_inventory()
        self.agent = Process(
            f"nodeagent-{name}",
            [
                str(cluster.bin / "nodeagent"),
                f"--kubeconfig={cluster.admin_kubeconfig}",
                f"--node-name={name}",
                f"--plugin-dir={self.plugin_dir}",
                f"--record-dir={self.record_dir}",
                f"--pod-resources-socket={self.pod_resources_socket}",
                *([f"--dra-registry-dir={self.registry_dir}"] if dra else []),
                "--cpu=128",  # room for the host share of every GPU pod a test puts here
                "--memory=1Ti",
                "--v=2",
            ],
            cluster.logs,
        )
        if dra:
            self.plugin = Process(
                f"dra-driver-{name}",
                [
                    console_script("gpupack-dra-driver"),
                    "--backend=fake",
                    f"--fake-inventory={self.inventory_file}",
                    f"--node-name={name}",
                    f"--kubeconfig={cluster.admin_kubeconfig}",
                    f"--registry-dir={self.registry_dir}",
                    f"--plugin-data-dir={self.dra_data_dir}",
                    f"--cdi-dir={self.cdi_dir}",
                    *plugin_args,
                ],
                cluster.logs,
            )
            return
        self.plugin = Process(
            f"device-plugin-{name}",
            [
                console_script("gpupack-device-plugin"),
                "--backend=fake",
                f"--fake-inventory={self.inventory_file}",
                f"--plugin-dir={self.plugin_dir}",
                f"--node-name={name}",
                f"--kubeconfig={cluster.admin_kubeconfig}",
                f"--pod-resources-socket={self.pod_resources_socket}",
                f"--metrics-addr={self.metrics_url.removeprefix('http://').removesuffix('/metrics')}",
                *plugin_args,
            ],
            cluster.logs,
        )

    def write_inventory(self) -> None:
        """Rewrites the fake backend's file (atomically: the plugin notices the change)."""
        tmp = self.inventory_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.machine, "gpus": self.gpus}, indent=1))
        tmp.replace(self.inventory_file)

    def set_healthy(self, gpu_id: str, healthy: bool) -> None:
        for g in self.gpus:
            if g["id"] == gpu_id:
                g["healthy"] = healthy
        self.write_inventory()

    def start(self) -> None:
        self.start_agent()
        self.cluster.wait_node(self.name, lambda n: True, "created by the node agent")
        self.cluster.core.patch_node(self.name, {"metadata": {"labels": {GROUP_LABEL: self.group}}})
        self.start_plugin()

    def start_plugin(self) -> None:
        """Starts the device plugin (or DRA driver); a DRA driver is waited for until the node
        agent's DRA manager has registered it (a pod admitted before would fail its admission)."""
        self.plugin.start()
        if self.dra:
            self.wait_agent(lambda state: DRIVER in (state.get("draDrivers") or []), f"DRA driver {DRIVER} registered")

    def stop_plugin(self) -> int | None:
        """Stops the device plugin (or DRA driver) with SIGTERM; for a DRA driver, waits until the
        node agent has seen it go (its registration socket removed). Returns its exit code."""
        code = self.plugin.stop()
        if self.dra:
            self.wait_agent(lambda state: DRIVER not in (state.get("draDrivers") or []), f"DRA driver {DRIVER} gone")
        return code

    def start_agent(self) -> None:
        """Starts the node agent and waits until this very process has published its state."""
        self.agent.start()
        assert self.agent.proc is not None
        pid = self.agent.proc.pid
        self.cluster.wait_node(self.name, lambda n: (agent_state(n) or {}).get("pid") == pid, f"node agent {pid} up")

    def wait_agent(self, done: Callable[[dict[str, Any]], Any], what: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Waits (watch) until the running node agent's published state satisfies ``done``:
        ``{"pid", "capacity": {resource: n}, "allocatable": {resource: n}, "draDrivers": [name]}``."""
        assert self.agent.proc is not None
        pid = self.agent.proc.pid

        def check(node: Any) -> bool:
            state = agent_state(node)
            return state is not None and state.get("pid") == pid and bool(done(state))

        node = self.cluster.wait_node(self.name, check, f"node agent {pid}: {what}", timeout_s)
        return agent_state(node) or {}

    def wait_allocatable(self, expected: Mapping[str, int], what: str = "", timeout_s: float = 60.0) -> Any:
        """Waits (watch) until the Node's allocatable and capacity show ``expected`` for each resource
        (capacity may be larger: it counts unhealthy devices too)."""

        def matches(node: Any) -> bool:
            alloc = node.status.allocatable or {}
            cap = node.status.capacity or {}
            return all(
                int(alloc.get(r, "0")) == n and int(cap.get(r, "0")) >= n for r, n in expected.items()
            )

        return self.cluster.wait_node(self.name, matches, what or f"allocatable {dict(expected)}", timeout_s)

    def slices(self) -> dict[str, Any]:
        """This node's published devices, by name, from its ResourceSlices of the newest generation."""
        items = self.cluster.resource.list_resource_slice(field_selector=f"spec.nodeName={self.name}").items
        return devices_of(items)

    def wait_slices(self, done: Callable[[dict[str, Any]], Any], what: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Waits (watch) until ``done(devices by name)`` is truthy for this node's newest slices."""

        def check(slices: dict[str, Any]) -> Any:
            devices = devices_of(slices.values())
            return devices if devices and done(devices) else None

        return dict(self.cluster.watch_until(
            self.cluster.resource.list_resource_slice, check, timeout_s, f"node {self.name}: {what}",
            field_selector=f"spec.nodeName={self.name}",
        ))

    def node_record(self) -> dict[str, Any]:
        """What the device manager last reported (written just before the Node is updated)."""
        try:
            return dict(json.loads((self.record_dir / "node.json").read_text()))
        except FileNotFoundError:
            return {}

    def pod_record(self, uid: str) -> dict[str, Any]:
        """What the node agent gave each container of a pod (written before it reported Running)."""
        return dict(json.loads((self.record_dir / "pods" / f"{uid}.json").read_text()))

    def close(self, delete: bool = True) -> None:
        self.plugin.stop()
        self.agent.stop()
        if delete:
            with contextlib.suppress(Exception):
                self.cluster.core.delete_node(self.name)
        self.cluster.nodes.pop(self.name, None)


def devices_of(slices: Iterable[Any]) -> dict[str, Any]:
    """The devices (V1Device, by name) of the newest generation of each pool among ``slices``,
    once all of that generation's slices are there (``resourceSliceCount``); {} before."""
    newest: dict[str, list[Any]] = {}
    for s in slices:
        pool = s.spec.pool
        kept = newest.get(pool.name)
        if kept is None or pool.generation > kept[0].spec.pool.generation:
            newest[pool.name] = [s]
        elif pool.generation == kept[0].spec.pool.generation:
            kept.append(s)
    devices: dict[str, Any] = {}
    for group in newest.values():
        if len(group) < group[0].spec.pool.resource_slice_count:
            return {}
        for s in group:
            devices.update({d.name: d for d in s.spec.devices or []})
    return devices


@contextlib.contextmanager
def running_cluster(keep: bool = False, dra: bool = False) -> Iterator[Cluster]:
    """Builds (cached) and starts a cluster in a temporary folder; always tears it down."""
    bin_dir = build_binaries()
    # Unix socket paths are limited to 107 bytes: stay in /tmp whatever TMPDIR says.
    work = pathlib.Path(tempfile.mkdtemp(prefix="gpupack-e2e-", dir="/tmp" if os.access("/tmp", os.W_OK) else None))
    cluster = Cluster(bin_dir, work, dra=dra)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        if keep:
            print(f"gpupack e2e: kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
