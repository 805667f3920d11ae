"""The Helm chart renders, its objects say what the programs need and no more, and
deploy/manifests/ is the chart as rendered with its default values.

Helm is built from its Go module by tools/helm/build.sh (cached outside the repository; the
first build takes a few minutes). Server-side dry runs of the rendered objects are in
tests/e2e/test_deploy_manifests.py, on the real kube-apiserver.
"""

from __future__ import annotations

import base64
import pathlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from cryptography import x509

from device_plugin import config as plugin_config
from scheduler_ext import certs, tls

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "gpupack"
SCHEDULER_CONFIG = REPO / "deploy" / "scheduler" / "kube-scheduler-config.yaml"

Render = Callable[..., list[dict[str, Any]]]

#: extender mode (the default on Kubernetes 1.36+ is gate mode: no extenders in the scheduler's profile)
EXTENDER = ["--set", "extender.placement=extender"]

MIG_TS_TLS = [
    "--set", "devicePlugin.migStrategy=mixed",
    "--set", "devicePlugin.timeSlicing.enabled=true",
    "--set", "devicePlugin.timeSlicing.renameByDefault=true",
    "--set", "devicePlugin.health.extraSkipXids={48}",
    "--set", "tls.enabled=true",
    "--set", "tls.clientAuth.enabled=true",
    "--set", "policy=fragmentation",
]


@pytest.fixture(scope="session")
def helm() -> str:
    proc = subprocess.run(
        [str(REPO / "tools" / "helm" / "build.sh")], capture_output=True, text=True, timeout=1500, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    def run(*args: str) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [helm, "template", "gpupack", str(CHART), "--namespace", "kube-system", "--kube-version", "1.37.2", *args],
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]

    return run


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.mark.parametrize("values", [[], MIG_TS_TLS], ids=["defaults", "mig-mixed+time-slicing+tls"])
def test_chart_renders_every_component(render: Render, values: list[str]) -> None:
    docs = render(*values)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [
        ("DaemonSet", "gpupack-device-plugin"), ("ConfigMap", "gpupack-device-plugin"),
        ("Deployment", "gpupack-extender"), ("Service", "gpupack-extender"),
        ("PodDisruptionBudget", "gpupack-extender"), ("Deployment", "gpupack-scheduler"),
        ("ConfigMap", "gpupack-scheduler"), ("ClusterRole", "gpupack-extender"),
        ("ClusterRole", "gpupack-device-plugin"),
    ]:
        assert expected in kinds
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"]


@pytest.mark.parametrize("values", [[], MIG_TS_TLS], ids=["defaults", "mig-mixed+time-slicing+tls"])
def test_device_plugin_config_is_one_the_plugin_accepts(render: Render, values: list[str]) -> None:
    raw = yaml.safe_load(by_kind(render(*values), "ConfigMap")["gpupack-device-plugin"]["data"]["config.yaml"])
    settings = plugin_config.apply_config(raw, plugin_config.Settings())
    if values:
        assert raw["flags"]["migStrategy"] == "mixed"
        assert raw["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]
        assert settings.layout != plugin_config.Settings().layout


def test_device_plugin_pod_least_privilege(render: Render) -> None:
    pod = by_kind(render(), "DaemonSet")["gpupack-device-plugin"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert "privileged" not in sc and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert paths == {"/var/lib/kubelet/device-plugins", "/var/lib/kubelet/pod-resources", "/dev"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = {t["matchExpressions"][0]["key"] for t in terms}
    assert {"nvidia.com/gpu.present", "feature.node.kubernetes.io/pci-10de.present", "gpupack.io/gpu.vendor"} <= keys
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert "readinessProbe" in container and "livenessProbe" in container
    # MIG health monitoring is the one reason for a capability
    mig = by_kind(render(*MIG_TS_TLS), "DaemonSet")["gpupack-device-plugin"]["spec"]["template"]["spec"]
    assert mig["containers"][0]["securityContext"]["capabilities"]["add"] == ["SYS_ADMIN"]


def rules(docs: list[dict[str, Any]], name: str) -> set[tuple[str, str, str]]:
    role = by_kind(docs, "ClusterRole")[name]
    return {
        (group, resource, verb)
        for r in role["rules"] for group in r["apiGroups"] for resource in r["resources"] for verb in r["verbs"]
    }


def test_rbac_is_exactly_what_the_programs_use(render: Render) -> None:
    docs = render()
    # device_plugin/kube.py: patch_node; list/watch pods on its node; patch_namespaced_pod
    # (AnnotationCorrector: gpupack.io/devices only, narrowed by gpupack-device-plugin-pods)
    assert rules(docs, "gpupack-device-plugin") == {
        ("", "nodes", "patch"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch")}
    # scheduler_ext/watch.py: list/watch nodes and pods; binder.py: read_namespaced_pod,
    # patch_namespaced_pod, create_namespaced_binding
    assert rules(docs, "gpupack-extender") == {
        ("", "nodes", "list"), ("", "nodes", "watch"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch"),
        ("", "bindings", "create"),
    }
    # scheduler_ext/ledger.py: the per-node ledger ConfigMaps, in the extender's own namespace only
    (ledger,) = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "gpupack-extender-ledger"]
    assert ledger["metadata"]["namespace"] == "kube-system"
    assert ledger["rules"] == [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]}]
    binding = by_kind(docs, "RoleBinding")["gpupack-extender-ledger"]
    assert binding["roleRef"]["name"] == "gpupack-extender-ledger" and binding["subjects"][0]["name"] == "gpupack-extender"
    # the scheduler gets the upstream roles, nothing hand-written beyond its own lease
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and d["subjects"][0]["name"] == "gpupack-scheduler"}
    assert bound == {"system:kube-scheduler", "system:volume-scheduler", "gpupack-scheduler-leader-election",
                     "extension-apiserver-authentication-reader"}


@pytest.mark.parametrize("values", [[], MIG_TS_TLS], ids=["defaults", "tls"])
def test_scheduler_config_is_the_shared_one(render: Render, values: list[str]) -> None:
    docs = render(*values, *EXTENDER)
    rendered = yaml.safe_load(by_kind(docs, "ConfigMap")["gpupack-scheduler"]["data"]["kube-scheduler-config.yaml"])
    source = yaml.safe_load(SCHEDULER_CONFIG.read_text())
    ext, src_ext = rendered["extenders"][0], source["extenders"][0]
    assert ext["managedResources"] == src_ext["managedResources"]
    assert ext["ignorable"] is False and ext["nodeCacheCapable"] is True
    assert rendered["profiles"][0]["schedulerName"] == "gpupack-scheduler"
    assert rendered["profiles"][0]["plugins"] == source["profiles"][0]["plugins"]
    assert rendered["profiles"][0]["pluginConfig"] == source["profiles"][0]["pluginConfig"]
    assert rendered["percentageOfNodesToScore"] == 100
    assert rendered["leaderElection"]["resourceName"] == "gpupack-scheduler"
    # the score-only entry for CPU-only pods: same address, weight and TLS as the first
    cpu_only, src_cpu_only = rendered["extenders"][1], source["extenders"][1]
    assert cpu_only["prioritizeVerb"] == src_cpu_only["prioritizeVerb"] and "managedResources" not in cpu_only
    assert cpu_only["ignorable"] is True and cpu_only["httpTimeout"] == src_cpu_only["httpTimeout"]
    assert (cpu_only["urlPrefix"], cpu_only["weight"], cpu_only.get("tlsConfig")) == (
        ext["urlPrefix"], ext["weight"], ext.get("tlsConfig"))
    # HTTPS with client auth by default: the source file's address and TLS files, which are
    # where the chart mounts the Secrets
    assert ext["urlPrefix"] == src_ext["urlPrefix"] == "https://gpupack-extender.kube-system.svc:8888"
    assert ext["tlsConfig"] == src_ext["tlsConfig"] and set(ext["tlsConfig"]) == {"caFile", "certFile", "keyFile"}
    env = {e["name"]: e.get("value") for e in
           by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GPUPACK_EXTENDER_TLS_CLIENT_CA"] == "/etc/gpupack/tls/ca.crt"
    if values:
        assert env["GPUPACK_EXTENDER_POLICY"] == "fragmentation"
        assert float(env["GPUPACK_EXTENDER_HOLD_SECONDS"]) == 5  # main's --hold-seconds parses it


def scheduler_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(yaml.safe_load(by_kind(docs, "ConfigMap")["gpupack-scheduler"]["data"]["kube-scheduler-config.yaml"]))


def extender_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_gate_mode_is_the_default_from_kubernetes_1_36(render: Render, helm: str) -> None:
    docs = render()
    config = scheduler_config(docs)
    source = yaml.safe_load(SCHEDULER_CONFIG.read_text())
    assert "extenders" not in config  # kube-scheduler's batching stays on
    assert config["profiles"][0]["plugins"] == source["profiles"][0]["plugins"]
    assert config["profiles"][0]["schedulerName"] == "gpupack-scheduler"
    env = extender_env(docs)
    assert env["GPUPACK_EXTENDER_PLACEMENT"] == "gate" and float(env["GPUPACK_EXTENDER_PLACEMENT_PATIENCE_SECONDS"]) == 30
    (policy,) = by_kind(docs, "MutatingAdmissionPolicy").values()
    assert policy["spec"]["matchConditions"][0]["expression"] == "object.spec.?schedulerName.orValue('') == \"gpupack-scheduler\""
    (binding,) = by_kind(docs, "MutatingAdmissionPolicyBinding").values()
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    # extender mode asked for: no gate policy, the extenders back
    docs = render(*EXTENDER)
    assert not by_kind(docs, "MutatingAdmissionPolicy") and scheduler_config(docs)["extenders"]
    assert "GPUPACK_EXTENDER_PLACEMENT" not in extender_env(docs)


def test_before_kubernetes_1_36_auto_is_extender_mode_and_gate_is_refused(helm: str) -> None:
    proc = subprocess.run([helm, "template", "gpupack", str(CHART), "--namespace", "kube-system", "--kube-version",
                           "1.35.0"], capture_output=True, text=True, timeout=120, check=True)
    docs = [d for d in yaml.safe_load_all(proc.stdout) if isinstance(d, dict)]
    assert not by_kind(docs, "MutatingAdmissionPolicy") and scheduler_config(docs)["extenders"]
    message = subprocess.run([helm, "template", "gpupack", str(CHART), "--kube-version", "1.35.0", "--set",
                              "extender.placement=gate"], capture_output=True, text=True, timeout=120).stderr
    assert "extender.placement=gate needs Kubernetes 1.36+" in message
    assert "is not one of auto, extender, gate" in refused(helm, "--set", "extender.placement=webhook")


def test_cpu_only_scoring_can_be_turned_off(render: Render) -> None:
    docs = render("--set", "scheduler.scoreCpuOnlyPods=false", "--set", "scheduler.weight=3", *EXTENDER)
    rendered = yaml.safe_load(by_kind(docs, "ConfigMap")["gpupack-scheduler"]["data"]["kube-scheduler-config.yaml"])
    (ext,) = rendered["extenders"]
    assert ext["filterVerb"] == "filter" and ext["weight"] == 3


def test_extender_probes_and_budget(render: Render) -> None:
    docs = render()
    pod = by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    # over HTTPS: the health paths need no client certificate (scheduler_ext/tls.py)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTPS"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http", "scheme": "HTTPS"}
    assert c["resources"]["requests"]
    assert by_kind(docs, "PodDisruptionBudget")["gpupack-extender"]["spec"]["minAvailable"] == 1


def test_manifests_are_the_rendered_chart(helm: str, tmp_path: pathlib.Path) -> None:
    """deploy/manifests/ is stale unless deploy/render.sh was run after the last chart change."""
    proc = subprocess.run(
        [str(REPO / "deploy" / "render.sh"), str(tmp_path)], capture_output=True, text=True, timeout=120,
        check=False, env={"HELM": helm, "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    shipped = REPO / "deploy" / "manifests"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in shipped.iterdir())
    for p in tmp_path.iterdir():
        assert p.read_text() == (shipped / p.name).read_text(), f"{p.name} is stale: run deploy/render.sh"


# --- authenticated by default, least privilege (issue 15) -----------------------------------


def secret_bytes(doc: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(doc["data"][key])


def test_helm_makes_a_ca_and_both_certificates(render: Render, tmp_path: pathlib.Path) -> None:
    """The default (tls.certificates=helm): the extender's serving certificate names its Service
    and chains to the CA, and kube-scheduler's client certificate passes the extender's own
    TLS check (a real handshake through scheduler_ext.tls, hostname verified)."""
    secrets = by_kind(render(), "Secret")
    ca, server, client = (secrets[n] for n in ("gpupack-extender-ca", "gpupack-extender-tls",
                                                "gpupack-scheduler-client-tls"))
    assert {d["type"] for d in (ca, server, client)} == {"kubernetes.io/tls"}
    assert secret_bytes(server, "ca.crt") == secret_bytes(client, "ca.crt") == secret_bytes(ca, "tls.crt")
    cert = x509.load_pem_x509_certificate(secret_bytes(server, "tls.crt"))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "gpupack-extender.kube-system.svc" in names and "gpupack-extender.kube-system.svc.cluster.local" in names
    files = {}
    for name, doc in (("server", server), ("client", client)):
        for key in doc["data"]:
            files[f"{name}/{key}"] = tmp_path / f"{name}-{key}"
            files[f"{name}/{key}"].write_bytes(secret_bytes(doc, key))
    ctx = tls.server_context(str(files["server/tls.crt"]), str(files["server/tls.key"]), str(files["server/ca.crt"]))
    peer = handshake(ctx, files["client/ca.crt"], files["client/tls.crt"], files["client/tls.key"],
                     "gpupack-extender.kube-system.svc")
    assert peer and dict(x[0] for x in peer["subject"])["commonName"] == "gpupack-scheduler"


def handshake(server_ctx: ssl.SSLContext, ca: pathlib.Path, cert: pathlib.Path, key: pathlib.Path,
              hostname: str) -> Any:
    """One TLS handshake over loopback; the client certificate the server saw."""
    seen: list[Any] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                seen.append(tls_conn.getpeercert())
                tls_conn.recv(1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        client = ssl.create_default_context(cafile=str(ca))
        client.load_cert_chain(str(cert), str(key))
        with client.wrap_socket(socket.create_connection(listener.getsockname(), timeout=10),
                                server_hostname=hostname) as c:
            c.sendall(b"x")
        thread.join(timeout=10)
    return seen[0] if seen else None


def test_the_kustomize_manifests_hold_no_private_key() -> None:
    # `helm template` has no cluster to look up, so each run makes new certificates:
    # deploy/manifests is rendered with the in-cluster Job instead, and never carries a key
    for path in (REPO / "deploy" / "manifests").iterdir():
        text = path.read_text()
        assert "PRIVATE KEY" not in text and "tls.key:" not in text, path
        assert "kind: Secret\n" not in text, path
    docs = [d for d in yaml.safe_load_all((REPO / "deploy" / "manifests" / "certificates.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} >= {"Job", "ServiceAccount", "Role", "ValidatingAdmissionPolicy"}


def test_the_certificates_job_may_write_only_its_three_secrets(render: Render) -> None:
    docs = render("--set", "tls.certificates=job")
    assert not by_kind(docs, "Secret")
    names = ["gpupack-extender-ca", "gpupack-extender-tls", "gpupack-scheduler-client-tls"]
    role = [d for d in docs if d["kind"] == "Role" and d["metadata"]["name"] == "gpupack-certs"][0]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": names, "verbs": ["get", "update"]},
        # RBAC cannot name what is created: the policy below does
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    vap = by_kind(docs, "ValidatingAdmissionPolicy")["gpupack-certs"]
    assert vap["spec"]["matchConditions"][0]["expression"] == \
        "request.userInfo.username == \"system:serviceaccount:kube-system:gpupack-certs\""
    assert all(n in vap["spec"]["validations"][0]["expression"] for n in names)
    assert by_kind(docs, "ValidatingAdmissionPolicyBinding")["gpupack-certs"]["spec"]["validationActions"] == ["Deny"]
    job = by_kind(docs, "Job")["gpupack-certs"]["spec"]
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == "gpupack-certs"
    command = pod["containers"][0]["command"]
    assert command[:2] == ["gpupack-extender", "certs"]
    # the flags are the subcommand's own
    certs.parser().parse_args(command[2:])
    assert "--service=gpupack-extender" in command and "--namespace=kube-system" in command
    assert job["ttlSecondsAfterFinished"] > 0


def test_cert_manager_when_the_operator_says_so(render: Render) -> None:
    docs = render("--set", "tls.certificates=cert-manager")
    assert not by_kind(docs, "Secret") and not by_kind(docs, "Job")
    issuers, certificates = by_kind(docs, "Issuer"), by_kind(docs, "Certificate")
    assert set(issuers) == {"gpupack-selfsigned", "gpupack-extender-ca"}
    assert certificates["gpupack-extender-ca"]["spec"]["isCA"] is True
    server, client = certificates["gpupack-extender"]["spec"], certificates["gpupack-scheduler-client"]["spec"]
    assert server["secretName"] == "gpupack-extender-tls" and "server auth" in server["usages"]
    assert "gpupack-extender.kube-system.svc" in server["dnsNames"]
    assert client["secretName"] == "gpupack-scheduler-client-tls" and "client auth" in client["usages"]
    assert server["issuerRef"]["name"] == client["issuerRef"]["name"] == "gpupack-extender-ca"
    # an issuer of the operator's own: the chart makes none
    docs = render("--set", "tls.certificates=cert-manager", "--set", "tls.certManager.issuerRef.kind=ClusterIssuer",
                  "--set", "tls.certManager.issuerRef.name=corp-ca")
    assert not by_kind(docs, "Issuer")
    assert by_kind(docs, "Certificate")["gpupack-extender"]["spec"]["issuerRef"] == {"kind": "ClusterIssuer",
                                                                                     "name": "corp-ca"}


def test_external_and_unknown_certificate_sources(render: Render, helm: str) -> None:
    docs = render("--set", "tls.certificates=external")
    assert not by_kind(docs, "Secret") and not by_kind(docs, "Job") and not by_kind(docs, "Certificate")
    assert "tls.certificates" in refused(helm, "--set", "tls.certificates=vault")


def refused(helm: str, *args: str) -> str:
    """What helm says when the chart refuses these values (it must refuse them)."""
    proc = subprocess.run([helm, "template", "gpupack", str(CHART), "--namespace", "kube-system",
                           "--kube-version", "1.37.2", *args], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0, proc.stdout[:400]
    return proc.stderr


def test_tls_can_be_turned_off(render: Render) -> None:
    docs = render("--set", "tls.enabled=false", *EXTENDER)
    rendered = yaml.safe_load(by_kind(docs, "ConfigMap")["gpupack-scheduler"]["data"]["kube-scheduler-config.yaml"])
    assert all(e["urlPrefix"].startswith("http://") and "tlsConfig" not in e for e in rendered["extenders"])
    assert not by_kind(docs, "Secret")
    env = {e["name"] for e in by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not {n for n in env if "TLS" in n}
    # the extender refuses to serve bind without client certificates unless told: the chart tells
    # it only when the operator turned TLS or client authentication off
    assert "GPUPACK_EXTENDER_ALLOW_UNAUTHENTICATED" in env


@pytest.mark.parametrize("values, allowed", [
    ((), False), (("--set", "tls.clientAuth.enabled=false"), True), (("--set", "tls.enabled=false"), True),
], ids=["default", "no-client-auth", "no-tls"])
def test_unauthenticated_callers_only_when_the_operator_says_so(render: Render, values: tuple[str, ...],
                                                                 allowed: bool) -> None:
    container = by_kind(render(*values), "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env.get("GPUPACK_EXTENDER_ALLOW_UNAUTHENTICATED") == "true") == allowed


def test_the_scheduler_mounts_what_its_tls_config_names(render: Render) -> None:
    docs = render(*EXTENDER)
    rendered = yaml.safe_load(by_kind(docs, "ConfigMap")["gpupack-scheduler"]["data"]["kube-scheduler-config.yaml"])
    pod = by_kind(docs, "Deployment")["gpupack-scheduler"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {}
    for m in pod["containers"][0]["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if secret:
            for item in secret["items"]:
                mounted[f"{m['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    tls_config = rendered["extenders"][0]["tlsConfig"]
    assert mounted[tls_config["caFile"]] == ("gpupack-extender-tls", "ca.crt")
    assert mounted[tls_config["certFile"]] == ("gpupack-scheduler-client-tls", "tls.crt")
    assert mounted[tls_config["keyFile"]] == ("gpupack-scheduler-client-tls", "tls.key")
    # the scheduler never sees the extender's private key
    assert ("gpupack-extender-tls", "tls.key") not in mounted.values()
    # gate mode: no extender to call, so no Secret mounted at all
    pod = by_kind(render(), "Deployment")["gpupack-scheduler"]["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["config"]
    assert [m["name"] for m in pod["containers"][0]["volumeMounts"]] == ["config"]


def test_network_policy_admits_only_the_scheduler_and_prometheus(render: Render, helm: str) -> None:
    docs = render()
    policy = by_kind(docs, "NetworkPolicy")["gpupack-extender"]["spec"]
    extender = by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["metadata"]["labels"]
    scheduler = by_kind(docs, "Deployment")["gpupack-scheduler"]["spec"]["template"]["metadata"]["labels"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= extender.items()
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    peers = rule["from"]
    assert peers[0]["podSelector"]["matchLabels"].items() <= scheduler.items() and "namespaceSelector" not in peers[0]
    assert peers[1] == {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    assert len(peers) == 2
    # another scheduler than ours: the operator must say where it runs
    assert "networkPolicy.extraFrom" in refused(helm, "--set", "scheduler.enabled=false")
    docs = render("--set", "scheduler.enabled=false", "--set", "networkPolicy.extraFrom[0].ipBlock.cidr=10.0.0.0/24")
    peers = by_kind(docs, "NetworkPolicy")["gpupack-extender"]["spec"]["ingress"][0]["from"]
    assert peers[-1] == {"ipBlock": {"cidr": "10.0.0.0/24"}} and len(peers) == 2


def test_admission_policies_name_each_program(render: Render) -> None:
    """What each program may write is checked by the API server (tests/e2e/test_least_privilege.py
    proves it on the real one): a policy per ServiceAccount, matched by its username, denying."""
    docs = render()
    policies, bindings = by_kind(docs, "ValidatingAdmissionPolicy"), by_kind(docs, "ValidatingAdmissionPolicyBinding")
    expected = {"gpupack-device-plugin": ("nodes", "system:serviceaccount:kube-system:gpupack-device-plugin"),
                "gpupack-device-plugin-pods": ("pods", "system:serviceaccount:kube-system:gpupack-device-plugin"),
                "gpupack-extender": ("pods", "system:serviceaccount:kube-system:gpupack-extender")}
    assert set(policies) == set(bindings) == set(expected)
    for name, (resource, user) in expected.items():
        spec = policies[name]["spec"]
        assert spec["failurePolicy"] == "Fail"
        assert resource in spec["matchConstraints"]["resourceRules"][0]["resources"]
        assert spec["matchConditions"][0]["expression"] == f'request.userInfo.username == "{user}"'
        assert bindings[name]["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    node_rule = " ".join(v["expression"] for v in policies["gpupack-device-plugin"]["spec"]["variables"])
    assert "authentication.kubernetes.io/node-name" in node_rule
