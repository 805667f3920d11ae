"""Prometheus metrics of the device plugin, on a registry of its own.

Always recorded (cheap); served over HTTP only when ``--metrics-addr`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping

import prometheus_client as prom

from device_plugin.resources import Device


class PluginMetrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.devices = prom.Gauge(
            "gpupack_plugin_devices", "Devices advertised to the kubelet", ["resource", "health"], registry=r
        )
        self.allocations = prom.Counter(
            "gpupack_plugin_allocations_total", "Containers given devices by Allocate", ["resource"], registry=r
        )
        self.allocate_errors = prom.Counter(
            "gpupack_plugin_allocate_errors_total", "Allocate calls refused", ["resource", "reason"], registry=r
        )
        self.health_events = prom.Counter(
            "gpupack_plugin_health_events_total",
            "Health events seen, by XID and what was done (unhealthy, ignored)",
            ["xid", "action"],
            registry=r,
        )
        self.recoveries = prom.Counter(
            "gpupack_plugin_recoveries_total", "GPUs that became Healthy again after probing", registry=r
        )
        self.registrations = prom.Counter(
            "gpupack_plugin_registrations_total", "Registrations with the kubelet (first and again)", ["resource"], registry=r
        )
        self.config_reloads = prom.Counter(
            "gpupack_plugin_config_reloads_total",
            "Changes of --config seen, by result (applied, refused: the settings in use stay)",
            ["result"], registry=r,
        )
        self.config_last_reload_ok = prom.Gauge(
            "gpupack_plugin_config_last_reload_ok",
            "1 when the last change of --config was applied (or none was seen), 0 when it was refused",
            registry=r,
        )
        self.config_last_reload_ok.set(1)
        self.annotation_corrections = prom.Counter(
            "gpupack_plugin_annotation_corrections_total",
            "Containers whose gpupack.io/devices annotation was corrected to what the kubelet gave them "
            "(kind: device = other GPUs or MIG devices, replica = other shares of the same GPUs)",
            ["resource", "kind"], registry=r,
        )
        self.annotation_correction_failures = prom.Counter(
            "gpupack_plugin_annotation_correction_failures_total",
            "Corrections of a gpupack.io/devices annotation that failed (retried on the next pass)",
            registry=r,
        )
        self.allocate_seconds = prom.Histogram(
            "gpupack_plugin_allocate_seconds",
            "Time to answer Allocate",
            ["resource"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=r,
        )
        self.preferred_seconds = prom.Histogram(
            "gpupack_plugin_preferred_allocation_seconds",
            "Time to answer GetPreferredAllocation",
            ["resource"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
            registry=r,
        )

    def config_reloaded(self, applied: bool) -> None:
        """A changed --config was applied, or refused (the settings in use stay)."""
        self.config_reloads.labels("applied" if applied else "refused").inc()
        self.config_last_reload_ok.set(1 if applied else 0)

    def set_devices(self, devices: Mapping[str, tuple[Device, ...]]) -> None:
        for resource, ds in devices.items():
            healthy = sum(1 for d in ds if d.healthy)
            self.devices.labels(resource, "Healthy").set(healthy)
            self.devices.labels(resource, "Unhealthy").set(len(ds) - healthy)

    def serve(self, addr: str) -> None:
        host, _, port = addr.rpartition(":")
        prom.start_http_server(int(port), addr=host or "127.0.0.1", registry=self.registry)
