"""Publishing ResourceSlices (device_plugin/dra/publisher.py) and the driver's health (driver.py).

The API server is a fake that behaves like kube-apiserver where it matters here: resourceVersions,
conflicts on a stale one, ``timeAdded`` set on new taints, field-selected lists, outages.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from device_plugin.discovery.backend import HealthEvent
from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.dra import slices
from gpupack import dra_names as names
from device_plugin.dra.driver import Driver
from device_plugin.dra.publisher import SlicePublisher
from device_plugin.fakes import nvml as fake_nvml

NODE = "gpu-node-1"


class Down(Exception):
    status = 503
    reason = "Service Unavailable"


class FakeSliceApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rv = 100
        self.writes: list[tuple[str, str]] = []
        self.down = False
        self.events: list[dict[str, Any]] = []
        self.changed = threading.Condition()

    def _check(self) -> None:
        if self.down:
            raise Down()

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        for d in obj["spec"].get("devices", []):
            for t in d.get("taints", []):
                t.setdefault("timeAdded", f"2026-01-01T00:00:{self.rv % 60:02d}Z")
        self.objects[obj["metadata"]["name"]] = obj
        return copy.deepcopy(obj)

    def node_uid(self, node: str) -> str:
        self._check()
        return "node-uid-1"

    def list(self, node: str, driver: str) -> tuple[list[dict[str, Any]], str]:
        self._check()
        items = [copy.deepcopy(o) for o in self.objects.values()
                 if o["spec"]["nodeName"] == node and o["spec"]["driver"] == driver]
        return items, str(self.rv)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert body["metadata"]["name"] not in self.objects, "409 AlreadyExists"
        self.writes.append(("create", body["metadata"]["name"]))
        return self._stamp(body)

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        assert body["metadata"].get("resourceVersion") == self.objects[name]["metadata"]["resourceVersion"], "409 Conflict"
        self.writes.append(("replace", name))
        return self._stamp(body)

    def delete(self, name: str) -> None:
        self._check()
        self.writes.append(("delete", name))
        self.objects.pop(name, None)

    def watch(self, node: str, driver: str, resource_version: str, timeout_s: float) -> Iterator[dict[str, Any]]:
        with self.changed:
            self.changed.wait_for(lambda: bool(self.events), timeout=min(timeout_s, 0.2))
            events, self.events = self.events, []
        yield from events


@pytest.fixture
def gpus(short_dir: pathlib.Path) -> tuple[Any, ...]:
    nvml = fake_nvml.a100_sxm4_8x("publisher")
    nvml.set_mig(0, ["7g.40gb"])
    return NvmlBackend(nvml, short_dir).discover()


def test_first_pass_creates_then_nothing_until_a_change(gpus: tuple[Any, ...]) -> None:
    api = FakeSliceApi()
    pub = SlicePublisher(api, NODE)
    pub.publish(gpus, {})
    pub.sync()
    # one counter slice (GPU 0 in MIG mode) and one device slice: 8 GPUs + 1 MIG device
    assert api.writes == [("create", f"{NODE}-gpu.gpupack.io-0"), ("create", f"{NODE}-gpu.gpupack.io-1")]
    first = api.objects[f"{NODE}-gpu.gpupack.io-1"]
    assert first["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "node-uid-1", "controller": True}]
    assert first["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 2}
    pub.publish(gpus, {})
    pub.sync()
    assert len(api.writes) == 2  # unchanged: nothing written


def test_health_changes_bump_the_generation_and_keep_time_added(gpus: tuple[Any, ...]) -> None:
    api = FakeSliceApi()
    pub = SlicePublisher(api, NODE)
    pub.publish(gpus, {})
    pub.sync()
    sick = tuple(dataclasses.replace(g, healthy=g.index != 3) for g in gpus)
    pub.publish(sick, {gpus[3].id: slices.Fault("xid-79", "NoExecute")})
    pub.sync()
    devices = api.objects[f"{NODE}-gpu.gpupack.io-1"]["spec"]["devices"]
    (taint,) = devices[4]["taints"]  # gpu-0, its MIG device, gpu-1, gpu-2, gpu-3
    assert (devices[4]["name"], taint["key"], taint["effect"]) == ("gpu-3", names.UNHEALTHY_TAINT, "NoExecute")
    assert {o["spec"]["pool"]["generation"] for o in api.objects.values()} == {2}  # every slice of the pool
    added = taint["timeAdded"]
    # another GPU faults: a new generation, but GPU 3's taint keeps its time (its eviction clock runs on)
    sicker = tuple(dataclasses.replace(g, healthy=g.index not in (3, 5)) for g in gpus)
    pub.publish(sicker, {gpus[3].id: slices.Fault("xid-79", "NoExecute"), gpus[5].id: slices.Fault("xid-48", "NoSchedule")})
    pub.sync()
    devices = api.objects[f"{NODE}-gpu.gpupack.io-1"]["spec"]["devices"]
    assert devices[4]["taints"][0]["timeAdded"] == added
    # recovered: taints gone, generation 4
    pub.publish(gpus, {})
    pub.sync()
    assert not any(d.get("taints") for o in api.objects.values() for d in o["spec"].get("devices", []))
    assert {o["spec"]["pool"]["generation"] for o in api.objects.values()} == {4}


def test_a_restarted_driver_adopts_equal_slices_and_rewrites_changed_ones(gpus: tuple[Any, ...]) -> None:
    api = FakeSliceApi()
    old = SlicePublisher(api, NODE)
    old.publish(gpus, {})
    old.sync()
    new = SlicePublisher(api, NODE)
    new.publish(gpus, {})
    new.sync()
    assert len(api.writes) == 2  # the same content: adopted, generation 1 kept
    # a layout change while it was down: the next generation after the highest seen
    fewer = tuple(dataclasses.replace(g, mig_enabled=False, mig=()) if g.index == 0 else g for g in gpus)
    newer = SlicePublisher(api, NODE)
    newer.publish(fewer, {})
    newer.sync()
    assert sorted(api.objects) == [f"{NODE}-gpu.gpupack.io-0"]  # no counter slice needed: one slice left
    assert api.writes[-2:] == [("replace", f"{NODE}-gpu.gpupack.io-0"), ("delete", f"{NODE}-gpu.gpupack.io-1")]
    assert api.objects[f"{NODE}-gpu.gpupack.io-0"]["spec"]["pool"] == {"name": NODE, "generation": 2, "resourceSliceCount": 1}


def test_slices_deleted_by_someone_else_come_back_and_the_api_going_away_is_retried(gpus: tuple[Any, ...]) -> None:
    api = FakeSliceApi()
    api.down = True
    pub = SlicePublisher(api, NODE, backoff_s=0.05, max_backoff_s=0.1, resync_s=30, watch_timeout_s=0.2)
    pub.publish(gpus, {})
    pub.start()
    try:
        threading.Event().wait(0.3)
        assert api.objects == {}  # away: retried with backoff, nothing written
        api.down = False
        _until(lambda: len(api.objects) == 2)
        # the kubelet wipes the node's slices (it restarted); the watch sees it
        name = f"{NODE}-gpu.gpupack.io-1"
        gone = api.objects.pop(name)
        with api.changed:
            api.events.append({"type": "DELETED", "object": gone})
            api.changed.notify_all()
        _until(lambda: name in api.objects)
        assert api.objects[name]["spec"]["pool"]["generation"] == 2
    finally:
        pub.stop()
    assert len(api.objects) == 2  # kept on stop by default


def test_remove_on_stop_deletes_them(gpus: tuple[Any, ...]) -> None:
    api = FakeSliceApi()
    pub = SlicePublisher(api, NODE, remove_on_stop=True)
    pub.publish(gpus, {})
    pub.sync()
    pub.stop()
    assert api.objects == {}


def _until(check: Any, timeout_s: float = 5.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.02)):
        if check():
            return
        done.wait(0.02)
    raise AssertionError("condition not met in time")


# --- the driver's health ---------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.last: tuple[tuple[Any, ...], dict[str, slices.Fault]] = ((), {})

    def publish(self, gpus: Any, faults: Any) -> None:
        self.last = (tuple(gpus), dict(faults))

    def start(self) -> None: ...

    def stop(self) -> None: ...


def test_xids_taint_probes_untaint(short_dir: pathlib.Path) -> None:
    from device_plugin.health import HealthSettings

    nvml = fake_nvml.a100_sxm4_8x("driver-health")
    rec = Recorder()
    driver = Driver(NvmlBackend(nvml, short_dir), HealthSettings(recovery_probes=2), publisher=rec)
    gpu = driver.gpus()[2]
    driver.apply_event(HealthEvent(gpu.id, "XID 13", xid=13))  # application error: nothing
    assert rec.last[1] == {}
    driver.apply_event(HealthEvent(gpu.id, "XID 48", xid=48))
    assert rec.last[1] == {gpu.id: slices.Fault("xid-48", "NoSchedule")}
    driver.apply_event(HealthEvent(gpu.id, "XID 79", xid=79))  # worse: NoExecute now
    assert rec.last[1] == {gpu.id: slices.Fault("xid-79", "NoExecute")}
    driver.apply_event(HealthEvent(gpu.id, "XID 48", xid=48))  # milder afterwards: stays NoExecute
    assert rec.last[1][gpu.id].effect == "NoExecute"
    assert not [g for g in rec.last[0] if g.id == gpu.id][0].healthy
    driver.probe_once()
    assert gpu.id in rec.last[1]  # one good probe of two
    driver.probe_once()
    assert rec.last[1] == {} and all(g.healthy for g in rec.last[0])
