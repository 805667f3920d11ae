"""The Helm chart renders, its objects say what the programs need and no more, and
deploy/manifests/ is the chart as rendered with its default values.

Helm is built from its Go module by tools/helm/build.sh (cached outside the repository; the
first build takes a few minutes). Server-side dry runs of the rendered objects are in
tests/e2e/test_deploy_manifests.py, on the real kube-apiserver.
"""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from device_plugin import config as plugin_config

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "gpupack"
SCHEDULER_CONFIG = REPO / "deploy" / "scheduler" / "kube-scheduler-config.yaml"

Render = Callable[..., list[dict[str, Any]]]

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
    # device_plugin/kube.py: patch_node; list/watch pods on its node
    assert rules(docs, "gpupack-device-plugin") == {("", "nodes", "patch"), ("", "pods", "list"), ("", "pods", "watch")}
    # scheduler_ext/watch.py: list/watch nodes and pods; binder.py: read_namespaced_pod,
    # patch_namespaced_pod, create_namespaced_binding
    assert rules(docs, "gpupack-extender") == {
        ("", "nodes", "list"), ("", "nodes", "watch"),
        ("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch"),
        ("", "bindings", "create"),
    }
    # the scheduler gets the upstream roles, nothing hand-written beyond its own lease
    bound = {d["roleRef"]["name"] for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")
             and d["subjects"][0]["name"] == "gpupack-scheduler"}
    assert bound == {"system:kube-scheduler", "system:volume-scheduler", "gpupack-scheduler-leader-election",
                     "extension-apiserver-authentication-reader"}


@pytest.mark.parametrize("values", [[], MIG_TS_TLS], ids=["defaults", "tls"])
def test_scheduler_config_is_the_shared_one(render: Render, values: list[str]) -> None:
    docs = render(*values)
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
    if values:
        assert ext["urlPrefix"] == "https://gpupack-extender.kube-system.svc:8888"
        assert set(ext["tlsConfig"]) == {"caFile", "certFile", "keyFile"}
        env = {e["name"]: e.get("value") for e in
               by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GPUPACK_EXTENDER_TLS_CLIENT_CA"] == "/etc/gpupack/tls/ca.crt"
        assert env["GPUPACK_EXTENDER_POLICY"] == "fragmentation"
        assert float(env["GPUPACK_EXTENDER_HOLD_SECONDS"]) == 5  # main's --hold-seconds parses it
    else:
        assert ext["urlPrefix"] == src_ext["urlPrefix"]


def test_cpu_only_scoring_can_be_turned_off(render: Render) -> None:
    docs = render("--set", "scheduler.scoreCpuOnlyPods=false", "--set", "scheduler.weight=3")
    rendered = yaml.safe_load(by_kind(docs, "ConfigMap")["gpupack-scheduler"]["data"]["kube-scheduler-config.yaml"])
    (ext,) = rendered["extenders"]
    assert ext["filterVerb"] == "filter" and ext["weight"] == 3


def test_extender_probes_and_budget(render: Render) -> None:
    docs = render()
    pod = by_kind(docs, "Deployment")["gpupack-extender"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
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
