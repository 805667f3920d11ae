"""``gpupack demo``: the device plugin on a built-in fake 8-GPU node, driven by a kubelet stand-in.

Everything real but the GPUs: the plugin's own gRPC servers on Unix sockets in a temporary
folder, registration through kubelet.sock, ListAndWatch, GetPreferredAllocation and Allocate
over the wire. The node is a modelled DGX A100 (8x A100-SXM4-40GB on NVSwitch, two NUMA
nodes). The demo prints what is advertised and allocated, then injects an application XID
(ignored), a GPU falling off the bus (Unhealthy, refused), its recovery, and a kubelet restart.
"""

from __future__ import annotations

import logging
import pathlib
import tempfile
from collections.abc import Iterator, Sequence

import grpc

from gpupack.kubeletapi import deviceplugin_v1beta1_pb2 as pb
from gpupack_cli.kubelet_standin import STREAM_DEADLINE_S, KubeletStandIn

from device_plugin.discovery.nvml import NvmlBackend
from device_plugin.fakes import nvml as fake_nvml
from device_plugin.health import HealthSettings
from device_plugin.manager import Manager


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def run(out: "Printer") -> int:
    fake = fake_nvml.a100_sxm4_8x("demo-node")
    with tempfile.TemporaryDirectory(prefix="gpupack-demo-") as tmp:
        folder = pathlib.Path(tmp)
        kubelet = KubeletStandIn(folder)
        kubelet.start()
        manager = Manager(
            NvmlBackend(fake),
            folder,
            health=HealthSettings(probe_interval_s=0.2, recovery_probes=2),
            node_name="demo-node",
        )
        manager.start()
        try:
            return _drive(out, fake, kubelet, manager)
        finally:
            manager.stop()
            kubelet.stop()


class Printer:
    def __call__(self, text: str = "") -> None:
        print(text, flush=True)


def _drive(out: Printer, fake: fake_nvml.FakeNvml, kubelet: KubeletStandIn, manager: Manager) -> int:
    reg = kubelet.next_registration()
    out(f"1. The plugin registered with the kubelet: resource {reg.resource_name}, API {reg.version}, "
        f"endpoint {reg.endpoint}, preferred allocation {reg.options.get_preferred_allocation_available}.")
    channel, stub = kubelet.plugin(reg.endpoint)
    stream: Iterator[pb.ListAndWatchResponse] = stub.ListAndWatch(pb.Empty(), timeout=STREAM_DEADLINE_S)
    first = next(stream)
    inv = {g.id: g for g in manager.inventory().gpus}
    out("\n2. ListAndWatch advertises (a modelled DGX A100: NVSwitch, two NUMA nodes):")
    out(table(
        ["device id", "health", "NUMA", "model", "memory", "NVLink peers"],
        [[d.ID, d.health, d.topology.nodes[0].ID, inv[d.ID].model, f"{inv[d.ID].memory_mib} MiB",
          f"{len(inv[d.ID].links)} x {inv[d.ID].links[0].nvlinks} links" if inv[d.ID].links else "-"]
         for d in first.devices],
    ))
    index = {g.id: g.index for g in inv.values()}
    free = [d.ID for d in first.devices]
    rows = []
    for pod, size in (("llama-70b", 4), ("mistral-7b", 1), ("embedder", 1), ("whisper", 2)):
        pref = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(
            container_requests=[pb.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=size)]
        )).container_responses[0].deviceIDs
        given = stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=pref)]))
        env = given.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"]
        numa = sorted({inv[d].numa_node for d in pref})
        rows.append([pod, size, ",".join(str(index[d]) for d in pref), ",".join(map(str, numa)), env[:40] + ("..." if len(env) > 40 else "")])
        free = [d for d in free if d not in pref]
    out("\n3. Four inference pods arrive; the kubelet asks for a preferred set, then allocates it:")
    out(table(["pod", "GPUs", "chosen GPU index", "NUMA", "NVIDIA_VISIBLE_DEVICES"], rows))
    out("   The 4-GPU pod stays on one NUMA node; single-GPU pods fill the other NUMA node's")
    out("   partly used side first, so the largest NVLink-joined blocks stay free.")

    out("\n4. GPU 5 reports XID 13 (graphics engine exception: an application bug): ignored.")
    fake.inject_xid(5, 13)
    out("   GPU 6 reports XID 79 (fallen off the bus):")
    fake.lose(6)
    update = next(stream)
    bad = [d for d in update.devices if d.health != "Healthy"]
    out(f"   ListAndWatch sends a new list: {', '.join(f'GPU {index[d.ID]} {d.health}' for d in bad)}")
    try:
        stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=[bad[0].ID])]))
    except grpc.RpcError as err:
        out(f"   Allocate on it is refused: {err.code().name}: {err.details()}")
    fake.recover(6)
    update = next(stream)
    out(f"   GPU 6 answers again; after 2 good probes it is advertised "
        f"{[d.health for d in update.devices if index[d.ID] == 6][0]} again.")

    out("\n5. The kubelet restarts (kubelet.sock recreated, plugin sockets removed):")
    kubelet.restart()
    again = kubelet.next_registration()
    out(f"   The plugin served again and re-registered: {again.resource_name} at {again.endpoint}.")
    channel.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(
        prog="gpupack demo",
        description="Run the device plugin on a built-in fake 8-GPU node (a modelled DGX A100) with a kubelet "
                    "stand-in over real gRPC sockets: registration, advertised devices, preferred allocation, "
                    "an ignored application XID, a GPU falling off the bus and recovering, a kubelet restart.",
    ).parse_args(list(argv or []))
    logging.basicConfig(level=logging.WARNING, format="   [plugin log] %(levelname)s %(message)s")
    return run(Printer())
