"""Prometheus metrics of the extender: latency per verb, decisions, failures by reason, the
HTTP edge's connections and refusals, and the cluster's idle and fragmented GPU capacity
(computed from the cache at scrape time)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy
import prometheus_client
from prometheus_client.core import GaugeMetricFamily

from gpupack import kernel
from scheduler_ext.cache import ClusterCache


class _CapacityCollector:
    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[Any]:
        rows, _ = self.cache.all_rows()
        idle, frag = kernel.idle_and_fragmented(rows, self.cache.mix(), numpy)
        nodes, pods = self.cache.counts()
        yield GaugeMetricFamily("gpupack_cluster_idle_gpus", "Idle GPU capacity in the cache, in GPUs.", value=idle)
        yield GaugeMetricFamily(
            "gpupack_cluster_fragmented_gpus",
            "Idle GPU capacity that the recent mix of request shapes cannot use (FGD), in GPUs.",
            value=frag,
        )
        yield GaugeMetricFamily("gpupack_cache_nodes", "Nodes in the cache.", value=nodes)
        yield GaugeMetricFamily("gpupack_cache_gpu_pods", "GPU pods in the cache.", value=pods)
        yield GaugeMetricFamily(
            "gpupack_cache_provisional_holds",
            "Pods holding devices between prioritize and bind (provisional holds).",
            value=self.cache.holds(),
        )


#: Gate mode's decision histograms (wall and CPU time), seconds.
DECISION_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self, cache: ClusterCache) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        self.latency = prometheus_client.Histogram(
            "gpupack_extender_request_seconds", "Extender request latency by verb.", ["verb"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.decisions = prometheus_client.Counter(
            "gpupack_extender_decisions", "Extender answers by verb and result.", ["verb", "result"],
            registry=self.registry,
        )
        self.failures = prometheus_client.Counter(
            "gpupack_extender_node_failures", "Nodes filtered out, by reason.", ["reason"],
            registry=self.registry,
        )
        self.binds = prometheus_client.Counter(
            "gpupack_extender_binds",
            "Successful binds by where they went: held-node (the node gpupack named and held devices "
            "on at prioritize), other-node (kube-scheduler chose another), no-hold.",
            ["on"], registry=self.registry,
        )
        # gate mode (scheduler_ext/placement.py)
        self.placement_seconds = prometheus_client.Histogram(
            "gpupack_placement_decision_seconds",
            "Gate mode: time to decide one gated pod (kernel over every node, the node filters, the device "
            "choice), before its ledger claim and patch.", registry=self.registry,
            buckets=DECISION_BUCKETS,
        )
        self.placement_cpu_seconds = prometheus_client.Histogram(
            "gpupack_placement_decision_cpu_seconds",
            "Gate mode: CPU time of the placing thread in one decision (as gpupack_placement_decision_seconds). "
            "Where that histogram's time is far above this one, the extender waits for a CPU (other threads or "
            "processes): give its container more CPU.", registry=self.registry,
            buckets=DECISION_BUCKETS,
        )
        self.placements = prometheus_client.Counter(
            "gpupack_placements",
            "Gate mode: gated pods by outcome: placed (pinned and ungated), handed-over (ungated as they were), "
            "waiting (a pass found no room), conflict (the pod changed under the patch), error (API failure).",
            ["outcome"], registry=self.registry,
        )
        # the HTTP edge's bounds (docs/reliability.md)
        self.connections = prometheus_client.Gauge(
            "gpupack_extender_connections", "Client connections open now.", registry=self.registry,
        )
        self.connections_refused = prometheus_client.Counter(
            "gpupack_extender_connections_refused",
            "Connections closed as soon as accepted because --max-connections were open.", registry=self.registry,
        )
        self.connections_dropped = prometheus_client.Counter(
            "gpupack_extender_connections_dropped",
            "Connections the extender closed on a deadline: read-timeout (a request not in whole within "
            "--read-timeout-seconds of its first byte), idle-timeout (no next request within "
            "--idle-timeout-seconds), write-timeout (an answer not taken within --read-timeout-seconds).",
            ["reason"], registry=self.registry,
        )
        self.http_refused = prometheus_client.Counter(
            "gpupack_extender_http_refused",
            "Requests refused before any verb read them (malformed HTTP, a body over --max-body-bytes), by status.",
            ["status"], registry=self.registry,
        )
        self.registry.register(_CapacityCollector(cache))

    def exposition(self) -> bytes:
        return prometheus_client.generate_latest(self.registry)
