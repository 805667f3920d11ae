"""Alert rules, scrape config and dashboard: they parse, have the fields their consumers need,
and name only metrics the programs export (read from the code, so a renamed metric fails here)."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
MONITORING = REPO / "deploy" / "monitoring"
#: series Prometheus makes itself
BUILTIN = {"up"}
_DECLARED = re.compile(
    r'(?:prom(?:etheus_client)?\.(Counter|Gauge|Histogram|Summary)|(GaugeMetricFamily|CounterMetricFamily))\(\s*"([a-z_:][a-z0-9_:]*)"'
)
_METRIC = re.compile(r"\b(gpupack_[a-z0-9_]+)\b")


def exported() -> set[str]:
    """Series names as scraped: counters get _total, histograms _bucket/_sum/_count."""
    names: set[str] = set()
    for path in [*(REPO / "device_plugin").glob("*.py"), *(REPO / "scheduler_ext").glob("*.py")]:
        for kind, family, name in _DECLARED.findall(path.read_text()):
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind in ("Histogram", "Summary"):
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            elif family == "CounterMetricFamily":
                names.add(name + "_total")
            else:
                names.add(name)
    return names


def test_code_exports_the_metrics_we_know() -> None:
    names = exported()
    assert {"gpupack_plugin_devices", "gpupack_extender_request_seconds_bucket", "gpupack_cluster_fragmented_gpus",
            "gpupack_gpu_utilization_ratio", "gpupack_extender_decisions_total"} <= names


def rule_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MONITORING / "prometheus-rules.yaml").read_text()) if d]


def test_alert_rules_parse_and_use_exported_metrics() -> None:
    names = exported()
    alerts = set()
    for doc in rule_docs():
        assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
        for group in doc["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
                assert rule["labels"]["severity"] in ("info", "warning", "critical")
                assert rule["annotations"]["summary"]
                expr = rule["expr"]
                assert expr.count("(") == expr.count(")"), rule["alert"]
                used = set(_METRIC.findall(expr))
                assert used <= names, f"{rule['alert']}: {used - names} not exported"
                assert used or set(re.findall(r"\b(\w+)\{", expr)) <= BUILTIN
                alerts.add(rule["alert"])
    assert {"GpupackGPUUnhealthy", "GpupackExtenderErrors", "GpupackExtenderLatencyHigh", "GpupackFragmentationHigh"} <= alerts


def test_dashboard_has_what_grafana_needs_and_exported_metrics() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    for field in ("uid", "title", "panels", "templating", "schemaVersion", "time"):
        assert field in dash
    names = exported()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"])
    for wanted in ("Idle GPUs per node", "Idle GPUs per model", "fragmented", "latency", "Allocations", "health"):
        assert wanted in titles
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        for t in p["targets"]:
            assert t["refId"] and set(_METRIC.findall(t["expr"])) <= names, (p["title"], t["expr"])
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "node", "model"}


def test_scrape_config_and_service_monitors() -> None:
    scrape = yaml.safe_load((MONITORING / "prometheus-scrape-config.yaml").read_text())
    assert {j["job_name"] for j in scrape["scrape_configs"]} == {"gpupack-extender", "gpupack-device-plugin"}
    monitors = [d for d in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()) if d]
    assert {m["metadata"]["name"] for m in monitors} == {"gpupack-extender", "gpupack-device-plugin"}
    for m in monitors:
        assert m["spec"]["endpoints"][0]["path"] == "/metrics"
