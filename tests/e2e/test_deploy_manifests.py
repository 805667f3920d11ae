"""Scenario 6: what an operator applies from ``deploy/`` is accepted by the real programs.

Kubernetes objects go through ``kubectl apply --dry-run=server`` (API server validation and
admission, nothing stored); component configuration files, which no API server serves, are
loaded and validated by the component itself (``kube-scheduler --write-config-to``). Helm
charts are left to their own test once helm is among the built binaries (issue 7): their
files are templates until ``helm template`` renders them.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import tempfile
from typing import Any

import pytest
import yaml

from . import cluster as harness

pytestmark = pytest.mark.e2e

DEPLOY = harness.REPO / "deploy"
EXAMPLES = harness.REPO / "examples"
#: kinds that are a component's own configuration, not API objects
COMPONENT_CONFIG_KINDS = {"KubeSchedulerConfiguration"}
#: the Prometheus Operator release whose CRDs (from its Go module) serve our monitoring objects
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
OPERATOR_CRDS = ("monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml")


def charts() -> list[pathlib.Path]:
    """Helm charts: their files are templates, not manifests, until rendered."""
    return sorted(p.parent for p in DEPLOY.rglob("Chart.yaml"))


def is_kubernetes(path: pathlib.Path) -> bool:
    """Kubernetes objects or component configs, not data files (dashboards, scrape configs,
    fake GPU inventories)."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except yaml.YAMLError:
        return True  # let the test say what is wrong with it
    return any("apiVersion" in d and "kind" in d for d in docs)


def manifests() -> list[pathlib.Path]:
    found = sorted(
        p for p in DEPLOY.rglob("*")
        if p.suffix in (".yaml", ".yml", ".json") and not any(c in p.parents for c in charts())
    ) + sorted(EXAMPLES.glob("*.yaml"))
    return [p for p in found if is_kubernetes(p)]


@pytest.fixture(scope="module")
def operator_crds(cluster: harness.Cluster) -> None:
    """The Prometheus Operator's own CRDs for ServiceMonitor and PrometheusRule, taken from its
    Go module (the proxy is the one source we may fetch from) and installed for real, so the
    monitoring objects are validated against the real schemas."""
    with tempfile.TemporaryDirectory() as outside_any_module:
        done = subprocess.run(["go", "mod", "download", "-json", PROMETHEUS_OPERATOR],
                              capture_output=True, text=True, timeout=300, check=False, cwd=outside_any_module)
    assert done.returncode == 0, done.stderr
    folder = pathlib.Path(json.loads(done.stdout)["Dir"]) / "example/prometheus-operator-crd"
    for name in OPERATOR_CRDS:
        # server-side: these CRDs are too large for the last-applied annotation
        assert cluster.kubectl("apply", "--server-side", "-f", str(folder / name)).returncode == 0
    names = [n.removeprefix("monitoring.coreos.com_").removesuffix(".yaml") + ".monitoring.coreos.com" for n in OPERATOR_CRDS]
    assert cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                           *[f"crd/{n}" for n in names]).returncode == 0


def kinds(path: pathlib.Path) -> set[str]:
    return {str(doc.get("kind")) for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)}


def test_deploy_has_the_scheduler_config() -> None:
    assert harness.SCHEDULER_CONFIG in manifests()


def check_scheduler_config(cluster: harness.Cluster, config: dict[str, Any], tmp_path: pathlib.Path) -> None:
    """kube-scheduler loads ``config`` (pointed at this cluster's credentials) without error.
    Extenders' TLS files, which kube-scheduler reads as it starts, are pointed at files of the
    same kinds (a CA, a client certificate and its key) from the test cluster's PKI."""
    config["clientConnection"]["kubeconfig"] = str(cluster.scheduler_kubeconfig)
    stand_ins = {"caFile": cluster.pki.ca, "certFile": cluster.pki.cert("admin"), "keyFile": cluster.pki.key("admin")}
    for extender in config.get("extenders") or []:
        tls = extender.get("tlsConfig")
        if tls:
            assert set(tls) <= set(stand_ins), tls
            extender["tlsConfig"] = {k: str(stand_ins[k]) for k in tls}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(cluster.bin / "kube-scheduler"), f"--config={tmp_path / 'config.yaml'}",
         f"--write-config-to={tmp_path / 'effective.yaml'}"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load((tmp_path / "effective.yaml").read_text())
    if "extenders" not in config:  # gate mode's profile: gpupack places ahead of kube-scheduler
        assert not effective.get("extenders")
        return
    names = [r["name"] for r in config["extenders"][0]["managedResources"]]
    assert [r["name"] for r in effective["extenders"][0]["managedResources"]] == names


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(harness.REPO)))
def test_manifest_is_accepted(
    cluster: harness.Cluster, operator_crds: None, path: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    if path.name == "kustomization.yaml":
        out = cluster.kubectl("apply", "--dry-run=server", "-k", str(path.parent))
        assert out.returncode == 0
        return
    # a scheduler configuration shipped inside a ConfigMap (the chart's gpupack-scheduler)
    for doc in docs:
        for value in (doc.get("data") or {}).values() if doc.get("kind") == "ConfigMap" else ():
            embedded = yaml.safe_load(value)
            if isinstance(embedded, dict) and embedded.get("kind") in COMPONENT_CONFIG_KINDS:
                check_scheduler_config(cluster, embedded, tmp_path)
    found = kinds(path)
    if found & COMPONENT_CONFIG_KINDS:
        assert found == {"KubeSchedulerConfiguration"}, f"{path}: mixes component config with {found}"
        # the file as shipped, only pointed at this cluster's credentials
        config = yaml.safe_load(path.read_text())
        check_scheduler_config(cluster, config, tmp_path)
        return
    # A dry run stores nothing, so objects in a namespace the same file creates would be refused:
    # create the namespaces the manifests name first, for real (an operator's first apply does).
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict):
            ns = doc["metadata"]["name"] if doc.get("kind") == "Namespace" else doc.get("metadata", {}).get("namespace")
            if ns:
                cluster.kubectl("create", "namespace", ns, check=False)
    out = cluster.kubectl("apply", "--dry-run=server", "-f", str(path))
    assert out.returncode == 0
