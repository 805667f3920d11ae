"""What the device plugin asks of the API server stays within its node (issue 15, item 8).

RBAC lets the plugin's ServiceAccount list and watch every pod: it cannot require a field
selector, and reads pass no admission. So the narrowing is the plugin's own: each of its pod
reads (the list, the watch, the fresh list before GetPreferredAllocation) asks for
``spec.nodeName=<its node>``, which these tests pin down. Its writes are narrowed by the API
server too (the chart's ValidatingAdmissionPolicy, proven in tests/e2e/test_least_privilege.py);
here: they are exactly what that policy admits, its own Node and gpupack.io/ keys only.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from gpupack import contract

from device_plugin import kube

from tests.fixtures import gpu


class RecordingPodsApi:
    """Records every pods call; the watch (a call with ``watch=True``) ends the plugin's loop."""

    def __init__(self, claims: kube.PodClaims | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.claims = claims

    def list_pod_for_all_namespaces(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if kwargs.get("watch"):
            assert self.claims is not None
            self.claims.stop()
            raise ConnectionError("the test ends the watch here")
        return type("Resp", (), {"data": json.dumps({"items": [], "metadata": {"resourceVersion": "5"}}).encode()})()


def test_every_pod_read_names_the_plugins_node() -> None:
    claims = kube.PodClaims(None, "gpu-7")
    api = RecordingPodsApi(claims)
    claims.api = api
    claims.refresh()  # before a GetPreferredAllocation
    thread = threading.Thread(target=claims.run, daemon=True)  # list, then watch
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(api.calls) == 3 and api.calls[2].get("watch") is True
    assert [c["field_selector"] for c in api.calls] == ["spec.nodeName=gpu-7"] * 3


class RecordingNodesApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def patch_node(self, name: str, body: dict[str, Any]) -> None:
        self.patches.append((name, body))


def test_the_only_node_write_is_gpupack_keys_on_its_own_node() -> None:
    api = RecordingNodesApi()
    publisher = kube.NodePublisher(api, "gpu-7")
    publisher.publish(contract.Inventory("gpu-7", tuple(gpu("gpu-7", i) for i in range(8))))
    ((name, body),) = api.patches
    assert name == "gpu-7"
    assert set(body) == {"metadata"} and set(body["metadata"]) == {"annotations", "labels"}
    keys = set(body["metadata"]["annotations"]) | set(body["metadata"]["labels"])
    assert keys and all(k.startswith(contract.LABEL_PREFIX) for k in keys), keys
