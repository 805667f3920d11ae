"""What every discovery backend answers, and the types it answers in.

A :class:`Backend` answers four questions for the rest of the plugin, which never touches a
hardware library itself: which GPUs exist (:meth:`Backend.discover`), which device nodes and
environment a container needs for some of them (:meth:`Backend.container_edits`), what health
events happen (:meth:`Backend.wait_event`), and whether a GPU answers again
(:meth:`Backend.probe`). The manager, the gRPC servers and the health tracker import this
module only, never a backend.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from gpupack import contract


class DiscoveryError(RuntimeError):
    """The backend cannot start; the message says why in an operator's words."""


class InputError(DiscoveryError):
    """The backend cannot start because of what the operator gave it (a flag, a fake inventory
    file); the message names the file and field. The plugin exits 2 on it, as on bad config."""


@dataclasses.dataclass(frozen=True)
class HealthEvent:
    """Something happened to a GPU (or, with ``gpu_id`` None, to every GPU)."""

    gpu_id: str | None
    reason: str
    xid: int | None = None


@dataclasses.dataclass(frozen=True)
class ContainerEdits:
    """What a container is given for its devices: environment and host device nodes."""

    envs: dict[str, str]
    device_nodes: tuple[str, ...]  # host paths, mapped to the same path in the container


@dataclasses.dataclass(frozen=True)
class Reading:
    """One GPU's (or MIG device's) utilisation and memory; None where NVML gives none."""

    utilization: float | None
    memory_used: int | None
    memory_total: int | None


class Backend(Protocol):
    name: str

    def discover(self) -> tuple[contract.Gpu, ...]:
        """Every GPU of the node, with its health as of now; resource and replicas unset."""
        ...

    def container_edits(self, visible_ids: list[str], pass_device_specs: bool) -> ContainerEdits:
        """What a container needs for these devices (GPU or MIG ids, each once). NVIDIA gives
        NVIDIA_VISIBLE_DEVICES and device nodes only with ``pass_device_specs``; vendors
        without a container toolkit (AMD, Intel) always give device nodes."""
        ...

    def wait_event(self, timeout_s: float) -> HealthEvent | None:
        """Blocks up to ``timeout_s`` for the next health event; None when there was none."""
        ...

    def probe(self, gpu_id: str) -> str | None:
        """None when the GPU answers normally, else why not."""
        ...

    def close(self) -> None: ...


def next_event(backend: Backend, timeout_s: float) -> HealthEvent | None:
    """The backend's next health event within ``timeout_s``, or None; a fault of the backend
    itself is an event about every GPU, so it never ends a health loop."""
    try:
        return backend.wait_event(timeout_s)
    except Exception as err:  # noqa: BLE001 - a backend fault must not end health checking
        return HealthEvent(None, f"health check failed: {err}")
