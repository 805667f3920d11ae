"""The HTTP edge fuzzed, every verb (filter, prioritize, prioritize-cpu-only, bind, preempt),
over real HTTP with a deadline per request, against one server whose cache must not change.

Three kinds of input:

- **malformed on purpose**: a valid request of each verb with one field made wrong, either
  its JSON type (``metadata`` a string, ``NumPDBViolations`` a list: a bad request, 400) or
  its number (a GPU count of 10^18, a memory hint that is no quantity, a CPU request beyond
  int64: a pod that cannot be read). What such a request must get is known: 400, or for a
  pod that cannot be read filter's answer for one (every node failed, unresolvable, with the
  reason) and prioritize's (no node preferred). Never a 200 that reads as a decision.
- **JSON shapes**: any JSON built from the words extender/v1 uses; valid or not, unknown.
- **raw bytes**: as a request's body, and as the whole HTTP request.

For all: no 500 and no internal error (an ``Error`` saying so is a bug), an answer (or a
close) within the deadline, a 200 that is the verb's wire format, no binding, no annotation
written, and the cache's placement state (its arrays, pods, holds, node CPU and memory)
unchanged; for the malformed ones its mix of request shapes and generation too (a valid pod
may teach the mix its shape, as it should). The properties guard invariants: derandomized
in CI (``tests/profiles.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupack import contract
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache, from_objects
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.server import ExtenderApp, ExtenderHTTPServer, Limits, serve

from tests.fixtures import pod as make_pod
from tests.profiles import invariant

from .conftest import FakePodApi, cluster_objects

DEADLINE = 5.0
VERBS = ["/filter", "/prioritize", "/prioritize-cpu-only", "/bind", "/preempt"]
NAMES = ["n-half", "n-empty", "n-cpu", "n-ghost"]


@dataclasses.dataclass
class Edge:
    cache: ClusterCache
    api: FakePodApi
    srv: ExtenderHTTPServer

    def state(self, malformed: bool) -> Any:
        """What a request must leave as it found: bindings and annotations written, the
        placement state, and for a malformed request what the cache learns from pods too."""
        return (list(self.api.bindings), self.api.patches, placement(self.cache),
                learning(self.cache) if malformed else None)


def placement(cache: ClusterCache) -> Any:
    """What decides where pods go: the kernel's arrays, the pods on each node, the holds."""
    rows, names = cache.all_rows()
    arrays = {f.name: getattr(rows, f.name).tobytes() for f in dataclasses.fields(rows)}
    pods = {n: sorted(repr(r) for r in cache.pods_on(n)) for n in names}
    return names, arrays, pods, cache.counts(), cache.holds(), [cache.node_free(n) for n in names]


def learning(cache: ClusterCache) -> Any:
    return cache.generation, cache.mix()


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    objs = cluster_objects()
    cache = from_objects(objs)
    # the pods a valid bind could bind: a malformed request must never reach them
    api = FakePodApi([o for o in objs if o["kind"] == "Pod"] + [make_pod("want1", gpus={contract.NVIDIA_GPU: 1})])
    decider = Decider(cache, "fragmentation")
    app = ExtenderApp(cache, decider, Binder(api, cache, decider.policy), Metrics(cache))
    srv, thread = serve(app, "127.0.0.1", 0, limits=Limits(max_body=1 << 20, read_timeout=0.5, idle_timeout=2))
    yield Edge(cache, api, srv)
    srv.shutdown()
    srv.server_close()
    thread.join()


def send(edge: Edge, path: str, body: bytes) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", edge.srv.server_address[1], timeout=DEADLINE)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def check_answer(path: str, status: int, raw: bytes, names: Any) -> Any:
    """The verb's wire format on 200; a reason on 400; never a 500 or an internal error."""
    assert status in (200, 400), (path, status, raw[:300])
    assert b"Traceback" not in raw and b"internal error" not in raw, raw[:300]
    if status == 400:
        assert raw.startswith(f"bad {path.strip('/')} request: ".encode()), raw[:300]
        return None
    body = json.loads(raw)
    if path == "/filter":
        assert set(body) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
        assert isinstance(body["Error"], str)
    elif path in ("/prioritize", "/prioritize-cpu-only"):
        assert isinstance(body, list) and all(0 <= h["Score"] <= 10 for h in body)
        if isinstance(names, list):
            assert [h["Host"] for h in body] == names
    elif path == "/bind":
        assert set(body) == {"Error"} and body["Error"], body  # no bind succeeds here
    else:
        assert set(body) == {"NodeNameToMetaVictims"}
    return body


# --- malformed on purpose ---------------------------------------------------------------------

GPU = contract.NVIDIA_GPU
LIMITS = ("Pod", "spec", "containers", 0, "resources", "limits")


def valid_pod(priority: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": "fuzz", "namespace": "fuzz", "uid": "uid-fuzz", "annotations": {}},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {GPU: "1"}, "requests": {"cpu": "1"}}}],
                     "priority": priority, "nodeSelector": {}},
            "status": {"phase": "Pending"}}


VALID = {
    "/filter": {"Pod": valid_pod(), "Nodes": None, "NodeNames": NAMES},
    "/prioritize": {"Pod": valid_pod(), "Nodes": None, "NodeNames": NAMES},
    "/prioritize-cpu-only": {"Pod": valid_pod(), "Nodes": None, "NodeNames": NAMES},
    "/bind": {"PodName": "want1", "PodNamespace": "default", "PodUID": "uid-want1", "Node": "n-half"},
    "/preempt": {"Pod": valid_pod(100), "NodeNameToVictims": None,
                 "NodeNameToMetaVictims": {"n-full": {"Pods": [{"UID": "uid-a"}], "NumPDBViolations": 0}}},
}
POD_PATHS: list[tuple[tuple[Any, ...], str]] = [
    (("Pod",), "object"), (("Pod", "metadata"), "object"), (("Pod", "spec"), "object"), (("Pod", "status"), "object"),
    (("Pod", "metadata", "annotations"), "object"), (("Pod", "metadata", "uid"), "string"),
    (("Pod", "metadata", "name"), "string"), (("Pod", "spec", "containers"), "list"),
    (("Pod", "spec", "containers", 0), "object"), (("Pod", "spec", "containers", 0, "name"), "string"),
    (("Pod", "spec", "containers", 0, "resources"), "object"), (LIMITS, "object"),
    (LIMITS + (GPU,), "quantity"), (("Pod", "spec", "containers", 0, "resources", "requests", "cpu"), "quantity"),
    (("Pod", "spec", "priority"), "integer"), (("Pod", "spec", "nodeSelector"), "object"),
    (("Pod", "status", "phase"), "string"),
]
# where each verb's JSON type is fixed (null is allowed almost everywhere: not a wrong type)
SHAPES: dict[str, list[tuple[tuple[Any, ...], str]]] = {
    "/filter": POD_PATHS + [(("NodeNames",), "list"), (("NodeNames", 0), "string")],
    "/prioritize": POD_PATHS + [(("NodeNames",), "list"), (("NodeNames", 2), "string")],
    "/prioritize-cpu-only": POD_PATHS + [(("NodeNames",), "list"), (("NodeNames", 1), "string")],
    "/bind": [((k,), "string") for k in ("PodName", "PodNamespace", "PodUID", "Node")],
    "/preempt": POD_PATHS + [
        (("NodeNameToMetaVictims",), "object"), (("NodeNameToMetaVictims", "n-full"), "object"),
        (("NodeNameToMetaVictims", "n-full", "Pods"), "list"), (("NodeNameToMetaVictims", "n-full", "Pods", 0), "object"),
        (("NodeNameToMetaVictims", "n-full", "Pods", 0, "UID"), "string"),
        (("NodeNameToMetaVictims", "n-full", "NumPDBViolations"), "integer"),
    ],
}
_scalars = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6)
_WRONG = {
    "object": st.booleans() | st.integers(-5, 5) | st.text(max_size=6) | st.lists(_scalars, max_size=3),
    "list": st.booleans() | st.integers(-5, 5) | st.text(max_size=6) | st.dictionaries(st.text(max_size=3), _scalars, max_size=2),
    "string": st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(_scalars, max_size=2) | st.dictionaries(st.text(max_size=3), _scalars, max_size=2),
    "integer": st.booleans() | st.text(max_size=6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.lists(_scalars, max_size=2) | st.dictionaries(st.text(max_size=3), _scalars, max_size=2),
    "quantity": st.booleans() | st.lists(_scalars, max_size=2) | st.dictionaries(st.text(max_size=3), _scalars, max_size=2),
}


def _not_a_count(text: str) -> bool:
    t = text.strip()
    return not (t.isascii() and t.isdigit() and len(t) < 6 and int(t) <= 1024)


# numbers out of range, or not numbers: the pod cannot be read (its JSON types are right)
_bad_counts = (st.integers(1025, 2**63 - 1) | st.integers(-(2**63), -1)
               | st.integers(1025, 10**40).map(str) | st.text(max_size=8).filter(_not_a_count))
VALUES: list[tuple[tuple[Any, ...], Any]] = [
    (LIMITS + (GPU,), _bad_counts),
    (("Pod", "metadata", "annotations", contract.GPU_MEMORY_ANNOTATION),
     st.sampled_from(["lots", "1e400", "9" * 400 + "Ti", "17Ti", f"{2**32}Mi", "-1Gi", "", "1.5.5Gi"])),
    (("Pod", "spec", "containers", 0, "resources", "requests", "cpu"),
     st.sampled_from(["1e30", "1e99999999", "-1", "abc", "9" * 30, "1Ei0", "NaN"]) | st.integers(-(2**62), -1)),
    (("Pod", "spec", "containers", 0, "resources", "requests", "memory"),
     st.sampled_from(["1e30", "100Ei", "-1Gi", "x"])),
    (("Pod", "spec", "priority"), st.integers(2**31, 2**63 - 1) | st.integers(-(2**63), -(2**31) - 1)),
]


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    if len(path) == 1:
        body[path[0]] = value
        return body
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return body


@st.composite
def malformed(draw: st.DrawFn) -> tuple[str, Any, str]:
    """A verb, a request with one field wrong, and what is wrong with it: "shape" or "value"."""
    path = draw(st.sampled_from(VERBS))
    if path != "/bind" and draw(st.booleans()):
        at, values = draw(st.sampled_from(VALUES))
        return path, _set(VALID[path], at, draw(values)), "value"
    at, kind = draw(st.sampled_from(SHAPES[path]))
    return path, _set(VALID[path], at, draw(_WRONG[kind])), "shape"


@invariant(400)
@given(malformed())
def test_every_verb_refuses_a_malformed_request(edge: Edge, case: tuple[str, Any, str]) -> None:
    path, body, what = case
    before = edge.state(malformed=True)
    status, raw = send(edge, path, orjson.dumps(body))
    answer = check_answer(path, status, raw, body.get("NodeNames"))
    if what == "shape" or path in ("/preempt", "/bind"):
        assert status == 400, (path, body, raw[:300])
    elif path == "/filter":  # kube-scheduler's contract for a pod that cannot be read
        assert answer["Error"] == "" and answer["NodeNames"] == [] and answer["FailedNodes"] == {}
        assert set(answer["FailedAndUnresolvableNodes"]) == set(NAMES)
        assert all("pod's request cannot be read" in why for why in answer["FailedAndUnresolvableNodes"].values())
    else:  # prioritize: no node preferred
        assert {h["Score"] for h in answer} == {0}
    assert edge.state(malformed=True) == before


def test_the_valid_requests_are_valid(edge: Edge) -> None:
    """The malformed cases' guard: unmutated, each verb decides (bind is not sent: it would
    bind, which is what its mutations must prevent)."""
    before = edge.state(malformed=False)
    for path in ("/filter", "/prioritize", "/prioritize-cpu-only", "/preempt"):
        status, raw = send(edge, path, orjson.dumps(VALID[path]))
        assert status == 200, raw
    assert json.loads(send(edge, "/filter", orjson.dumps(VALID["/filter"]))[1])["NodeNames"] == ["n-half", "n-empty"]
    assert edge.state(malformed=False) == before


# --- JSON shapes, raw bytes -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["1", "2", "n-half", GPU, "1e30", "1000000000000000000", "-1", "10Gi"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["metadata", "spec", "containers", "initContainers", "resources", "limits", "requests", GPU,
                         "cpu", "memory", "overhead", "annotations", contract.DEVICES_ANNOTATION,
                         contract.GPU_MEMORY_ANNOTATION, "name", "uid", "items", "Pods", "UID", "NumPDBViolations",
                         "priority", "nodeName", "nodeSelector", "affinity", "status", "phase"]) | st.text(max_size=5),
        inner, max_size=4),
    max_leaves=20,
)
pod_like = st.builds(
    lambda q, mem, dev, c, cpu: {"metadata": {"uid": "fuzz", "annotations": {contract.GPU_MEMORY_ANNOTATION: mem,
                                                                             contract.DEVICES_ANNOTATION: dev}},
                                 "spec": {"containers": [{"name": c, "resources": {"limits": {GPU: q},
                                                                                   "requests": {"cpu": cpu}}}]}},
    json_values, json_values, json_values, json_values, json_values,
)
bodies = st.fixed_dictionaries({}, optional={
    "Pod": json_values | pod_like, "Nodes": json_values | st.builds(lambda items: {"items": items}, json_values),
    "NodeNames": json_values | st.lists(st.sampled_from(NAMES + ["", "x"]), max_size=4),
    "NodeNameToVictims": json_values, "NodeNameToMetaVictims": json_values,
    "PodName": json_values, "PodNamespace": json_values, "PodUID": json_values, "Node": json_values,
})


@invariant(400)
@given(st.sampled_from(VERBS), bodies | json_values)
def test_any_json_shape_is_answered_and_changes_nothing(edge: Edge, path: str, body: Any) -> None:
    before = edge.state(malformed=False)
    status, raw = send(edge, path, orjson.dumps(body))
    check_answer(path, status, raw, body.get("NodeNames") if isinstance(body, dict) else None)
    assert edge.state(malformed=False) == before


# valid bodies to mutate, the bind's for a pod that does not exist (unmutated, it must not bind)
valid_bytes = [orjson.dumps(b) for path, b in VALID.items() if path != "/bind"] + [
    orjson.dumps({**VALID["/bind"], "PodName": "nobody"})]
raw_bodies = st.binary(max_size=300) | st.builds(
    lambda b, cut, flip, at: (b[:cut] + bytes([flip]) + b[cut + 1:])[: max(at, 1)] if flip >= 0 else b[:cut],
    st.sampled_from(valid_bytes), st.integers(0, 400), st.integers(-1, 255), st.integers(0, 2000))


@invariant(300)
@given(st.sampled_from(VERBS), raw_bodies)
def test_any_bytes_as_a_body_are_answered_and_change_nothing(edge: Edge, path: str, body: bytes) -> None:
    before = edge.state(malformed=False)
    status, raw = send(edge, path, body)
    check_answer(path, status, raw, None)
    assert edge.state(malformed=False) == before


REQUEST_STATUS = {200, 400, 404, 408, 413, 414, 431, 501, 505}
heads = st.sampled_from([b"POST /filter HTTP/1.1\r\n", b"POST /bind HTTP/1.1\r\n", b"POST /preempt HTTP/1.0\r\n",
                         b"GET /healthz HTTP/1.1\r\n", b"POST /prioritize HTTP/1.1\r\nContent-Length: 5\r\n"])
raw_requests = st.binary(max_size=300) | st.builds(lambda h, rest: h + rest, heads, st.binary(max_size=200)) | st.builds(
    lambda h, n, body: h + f"Content-Length: {n}\r\n\r\n".encode() + body, heads, st.integers(0, 400), raw_bodies)


@invariant(300)
@given(raw_requests)
def test_any_bytes_as_a_request_are_answered_or_closed_and_change_nothing(edge: Edge, data: bytes) -> None:
    """Whatever arrives, within the deadline the server answers with a status of its own
    (never 500) or closes; the client closes its side after sending, as a client giving up."""
    before = edge.state(malformed=False)
    with socket.create_connection(edge.srv.server_address[:2], timeout=DEADLINE) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all was sent
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    for line in out.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert int(line.split()[1]) in REQUEST_STATUS, out[:300]
    assert b"internal error" not in out and b"Traceback" not in out
    assert edge.state(malformed=False) == before
