"""The extender's HTTP edge: kube-scheduler's extender/v1 JSON in, the decider's answers out.

:class:`ExtenderApp` is transport-free (verb + body bytes -> status + JSON); the handler
only reads the body, calls it and writes the answer. Every request body is validated before
anything is decided: a body whose JSON shapes are not extender/v1's gets HTTP 400 with the
field named, an oversized one 413, an unknown node a per-node failure, a pod whose numbers
are out of range (:mod:`scheduler_ext.podspec`) the same answer as a pod that cannot be read,
and no exception escapes as a 500 with Python's text.

:class:`Limits` bounds what one client may hold: the body's size, how long a request may take
to arrive and a kept-alive connection may stay idle, how many connections are open, how many
wait to be accepted (docs/reliability.md).
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import http
import json
import logging
import math
import platform
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy
import orjson

from scheduler_ext import podspec, tls, wire
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.podspec import PodDemand, pod_demand

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes), 160 MiB. kube-scheduler's largest request is a
#: filter or prioritize with ``nodeCacheCapable: false``, every candidate Node in full: 5,000
#: Nodes as its informer holds them (8 GPUs each, GPU feature discovery's labels, 50 images,
#: the inventory annotation) come to 83 MiB (``bench/extender_load.py``); twice that, rounded.
DEFAULT_MAX_BODY = 160 * 2**20
#: Most nodes named in one request (NodeNames, Nodes.items, a preempt's node maps): twenty
#: times the 5,000 nodes Kubernetes supports in one cluster.
MAX_NODES = 100_000
#: A body at least this large (bytes; a filter with some 500 Nodes in full) is followed, once
#: answered, by :func:`release_memory`.
LARGE_BODY = 8 * 2**20
#: Most victims proposed on one node (the kubelet's maxPods is 110 by default, a few hundred
#: at most).
MAX_VICTIMS = 10_000


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may hold of the extender's HTTP edge. Each default is weighed against
    what kube-scheduler's extender client does (docs/reliability.md)."""

    #: bytes of one request body; larger ones get 413 from their Content-Length, unread
    max_body: int = DEFAULT_MAX_BODY
    #: seconds from a request's first byte to its last, and for its answer to be taken: a
    #: client that stalls mid-request is answered 408 and dropped. Six times kube-scheduler's
    #: default ``httpTimeout`` (5 s), by when its client has long given up on the request.
    read_timeout: float = 30.0
    #: seconds a kept-alive connection may wait for its next request. Above the idle timeout
    #: of kube-scheduler's Go transport (90 s), so its client, not this server, closes an idle
    #: connection: a close from here could cross a request already on its way.
    idle_timeout: float = 120.0
    #: connections open at once (a thread each); a connection beyond them is answered 503 and
    #: closed as it is accepted. kube-scheduler opens one per request in flight: its scheduling
    #: cycle one at a time, and one per bind in progress.
    max_connections: int = 512
    #: listen backlog: connections the kernel completes before they are accepted (capped by
    #: ``net.core.somaxconn``); a burst of kube-scheduler's binds must not see resets.
    backlog: int = 1024
    #: bytes of request bodies being received or decided at once, over all connections (an
    #: answer being written no longer counts); a body that would pass it gets 503 from its
    #: Content-Length (unless it would be alone).
    #: The largest body and 32 MiB besides: kube-scheduler sends one large request at a time
    #: (its scheduling cycle), and its binds beside it are a few hundred bytes each.
    max_body_in_flight: int = DEFAULT_MAX_BODY + 32 * 2**20

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"{f.name}: must be more than 0, not {getattr(self, f.name)!r}")


def _malloc_trim() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or nothing elsewhere."""
    if platform.libc_ver()[0] != "glibc":
        return lambda: None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None

    def call() -> None:
        trim(0)

    return call


def release_memory() -> None:
    """Hands the free memory inside the heap back to the system, not only what is free at its
    top. A large body's parsed objects are freed when its request is answered, but glibc keeps
    the pages of free chunks below the heap's top (and up to its trim threshold above): after a
    58 MiB filter of full Nodes, 21 MiB stayed; with this, none (tests/scheduler_ext/test_bounds.py)."""
    global _trim
    if _trim is None:
        _trim = _malloc_trim()
    _trim()


_trim: Callable[[], None] | None = None


class BadRequest(ValueError):
    """A body that does not follow extender/v1; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


def _json(status: int, obj: Any) -> Answer:
    return Answer(status, orjson.dumps(obj))


def _object(raw: Any, what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest(f"{what}: expected a JSON object")
    return raw


def _names(args: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]] | None]:
    """The candidate node names, and the full Node objects when the scheduler sent them."""
    names = args.get("NodeNames")
    nodes = args.get("Nodes")
    if names is not None:
        if not isinstance(names, list):
            raise BadRequest("NodeNames: expected a list of strings or null")
        if len(names) > MAX_NODES:
            raise BadRequest(f"NodeNames: {len(names)} names, more than {MAX_NODES}")
        try:
            "".join(names)  # refuses anything but strings, at C speed
        except TypeError as err:
            raise BadRequest("NodeNames: expected a list of strings or null") from err
        return names, None
    if nodes is None:
        return [], None
    nodes = _object(nodes, "Nodes")
    items = nodes.get("items")
    if items is None:
        items = []
    if not isinstance(items, list):
        raise BadRequest("Nodes.items: expected a list")
    if len(items) > MAX_NODES:
        raise BadRequest(f"Nodes.items: {len(items)} nodes, more than {MAX_NODES}")
    out: list[str] = []
    for i, n in enumerate(items):
        meta = _object(n, f"Nodes.items[{i}]").get("metadata")
        name = _object(meta, f"Nodes.items[{i}].metadata").get("name") if meta is not None else None
        if not isinstance(name, str):
            raise BadRequest(f"Nodes.items[{i}].metadata.name: expected a string")
        out.append(name)
    # The names are kept past the request (the decider's memo): copies, so that they do not
    # keep the memory of the parsed Node objects they sit among from going back.
    copied: list[str] = orjson.loads(orjson.dumps(out))
    return copied, items


def _pod(args: dict[str, Any]) -> dict[str, Any]:
    pod = args.get("Pod")
    if pod is None:
        raise BadRequest("Pod: missing or null")
    return _object(pod, "Pod")


def _str_field(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{key}: expected a string")
    return value


#: What stands between one node name and the next in a prioritize answer, by the first one's level.
_BETWEEN = numpy.array([f'","Score":{level}}},{{"Host":"' for level in range(11)], dtype=object)


def host_priorities(names: list[str], levels: numpy.ndarray[Any, Any]) -> bytes:
    """``[{"Host":name,"Score":level},...]`` as JSON. At thousands of nodes, building a dict
    per node costs more than the decision itself, so when no name needs escaping (node names
    are DNS names: they never do) the names are joined with the text between them, chosen per
    level; otherwise orjson writes the list of dicts."""
    if not names:
        return b"[]"
    joined = "".join(names)
    if not joined.isprintable() or '"' in joined or "\\" in joined:
        return orjson.dumps([{"Host": n, "Score": s} for n, s in zip(names, levels.tolist())])
    parts: list[str] = [""] * (2 * len(names))
    parts[0::2] = names
    parts[1::2] = _BETWEEN[levels].tolist()
    parts[-1] = f'","Score":{int(levels[-1])}}}]'
    return ('[{"Host":"' + "".join(parts)).encode()


class Raw(bytes):
    """JSON already encoded."""


#: Pods kept from filter and prioritize for their bind (kube-scheduler binds a pod shortly after
#: it prioritized it; binds of a burst run beside the next pods' filters).
SEEN_PODS = 64
#: Larger Pods are not kept (their bind reads them from the API): 64 x 256 KiB at most.
SEEN_POD_BYTES = 256 * 1024


class ExtenderApp:
    """The verbs, without HTTP."""

    def __init__(self, cache: ClusterCache, decider: Decider, binder: Binder | None, metrics: Metrics) -> None:
        self.cache = cache
        self.decider = decider
        self.binder = binder
        self.metrics = metrics
        self.replica = ""  # this replica's name, shown by /readyz
        self._last_demand: tuple[bytes, PodDemand] | None = None
        # the Pods kube-scheduler sent filter and prioritize, by uid (JSON), for their bind
        self._seen: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._seen_lock = threading.Lock()
        self._routes: dict[str, Callable[[dict[str, Any]], Any]] = {
            "/filter": self.filter,
            "/prioritize": self.prioritize,
            "/prioritize-cpu-only": self.prioritize_cpu_only,
            "/bind": self.bind,
            "/preempt": self.preempt,
        }

    def handle_get(self, path: str) -> Answer:
        if path == "/healthz":
            return Answer(200, b"ok\n", "text/plain")
        if path == "/readyz":
            ok = self.cache.synced
            # every replica serves every verb: binds claim their devices in the node's ledger
            who = f"replica {self.replica}; every replica serves (binds claim devices in the per-node ledger)"
            text = f"ok: {who}\n" if ok else f"cache not synced yet: {who}\n"
            return Answer(200 if ok else 503, text.encode(), "text/plain")
        if path == "/metrics":
            return Answer(200, self.metrics.exposition(), "text/plain; version=0.0.4")
        return Answer(404, b"not found\n", "text/plain")

    def handle_post(self, path: str, body: bytes | bytearray) -> Answer:
        route = self._routes.get(path.rstrip("/") or "/")
        if route is None:
            return Answer(404, b"not found\n", "text/plain")
        verb = path.strip("/")
        start = time.perf_counter()
        try:
            try:
                args = orjson.loads(body)  # stricter than json: UTF-8 only, no NaN, 64-bit integers
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise BadRequest(f"body is not JSON: {err}") from err
            out = route(_object(args, "body"))
            answer = Answer(200, out) if isinstance(out, Raw) else _json(200, out)
            self.metrics.decisions.labels(verb, "ok").inc()
            return answer
        except BadRequest as err:
            self.metrics.decisions.labels(verb, "bad-request").inc()
            return Answer(400, f"bad {verb} request: {err}\n".encode(), "text/plain")
        except Exception as err:  # the scheduler gets a reason, never Python's text: that is logged
            log.exception("%s failed", verb)
            self.metrics.decisions.labels(verb, "error").inc()
            return self._error(verb, f"gpupack: internal error in {verb} ({type(err).__name__}; see the extender's log)")
        finally:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - start)

    def _error(self, verb: str, message: str) -> Answer:
        if verb == "filter":
            return _json(200, {"Nodes": None, "NodeNames": None, "FailedNodes": None,
                               "FailedAndUnresolvableNodes": None, "Error": message})
        if verb == "bind":
            return _json(200, {"Error": message})
        return Answer(500, (message + "\n").encode(), "text/plain")

    def filter(self, args: dict[str, Any]) -> Raw:
        pod = _pod(args)
        names, items = _names(args)
        d = self.decider.filter(self._demand(pod), names)
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        for g in d.groups:
            nodes = [names[i] for i in g.positions.tolist()]
            (unresolvable if g.unresolvable else failed).update(dict.fromkeys(nodes, "gpupack: " + g.text))
            self.metrics.failures.labels(g.code).inc(len(nodes))
        result: wire.ExtenderFilterResult = {
            "Nodes": None, "NodeNames": None, "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable, "Error": "",
        }
        if items is None:
            result["NodeNames"] = d.fitting_names
        else:
            result["Nodes"] = {"metadata": {}, "items": [items[i] for i in numpy.nonzero(d.fits)[0].tolist()]}
        try:
            return Raw(orjson.dumps(result))
        except orjson.JSONEncodeError as err:  # orjson reads 1024 levels of nesting, writes 254
            raise BadRequest(f"Nodes.items: a Node cannot be sent back ({err})") from err

    def _demand(self, pod: dict[str, Any]) -> PodDemand:
        """:func:`pod_demand` of ``pod``, after :func:`podspec.check_shape` (a Pod whose JSON
        types are not a v1.Pod's is a bad request). kube-scheduler sends prioritize the Pod it
        sent filter, so the last Pod read and its demand are kept: a Pod whose JSON is the same,
        byte for byte (``1`` and ``1.0`` are equal in Python, not to :func:`pod_demand`), is not
        read again."""
        try:
            text = orjson.dumps(pod)
        except orjson.JSONEncodeError as err:  # orjson reads 1024 levels of nesting, writes 254
            raise BadRequest(f"Pod: {err}") from err
        last = self._last_demand
        if last is not None and last[0] == text:
            return last[1]
        try:
            podspec.check_shape(pod)
        except podspec.ShapeError as err:
            raise BadRequest(str(err)) from err
        # read from a copy: the demand outlives the request (here and in the decider's memo),
        # and its strings must not keep the memory of a large parsed body from going back
        demand = pod_demand(orjson.loads(text))
        self._last_demand = (text, demand)
        if demand.uid and len(text) <= SEEN_POD_BYTES:
            with self._seen_lock:
                self._seen.pop(demand.uid, None)
                self._seen[demand.uid] = text
                while len(self._seen) > SEEN_PODS:
                    self._seen.popitem(last=False)
        return demand

    def prioritize(self, args: dict[str, Any]) -> Raw:
        pod = _pod(args)
        names, _ = _names(args)
        level = self.decider.prioritize(self._demand(pod), names)
        return Raw(host_priorities(names, level))

    def prioritize_cpu_only(self, args: dict[str, Any]) -> Raw:
        """The second extender entry's prioritize: kube-scheduler sends it every pod (it names no
        managedResources). Pods without GPUs are scored as :meth:`prioritize` would (their CPU
        and memory go where they strand the fewest idle GPUs); pods with GPUs, and pods whose GPU
        request cannot be read, get 0 on every node, as the first entry scores them."""
        pod = _pod(args)
        names, _ = _names(args)
        demand = self._demand(pod)
        if demand.wants_gpu or demand.error:
            return Raw(host_priorities(names, numpy.zeros(len(names), numpy.int64)))
        return Raw(host_priorities(names, self.decider.prioritize(demand, names)))

    def bind(self, args: dict[str, Any]) -> wire.ExtenderBindingResult:
        bargs: wire.ExtenderBindingArgs = {
            "PodName": _str_field(args, "PodName"),
            "PodNamespace": _str_field(args, "PodNamespace"),
            "PodUID": _str_field(args, "PodUID"),
            "Node": _str_field(args, "Node"),
        }
        if self.binder is None:
            return {"Error": "gpupack: this extender runs on a snapshot and cannot bind"}
        held = self.cache.held(bargs["PodUID"])  # read before the bind replaces the hold
        with self._seen_lock:
            text = self._seen.pop(bargs["PodUID"], None)
        error = self.binder.bind(bargs, orjson.loads(text) if text is not None else None)
        if not error:
            self.metrics.binds.labels("no-hold" if not held else "held-node" if held == bargs["Node"] else "other-node").inc()
        return {"Error": error}

    def preempt(self, args: dict[str, Any]) -> wire.ExtenderPreemptionResult:
        """Victims per node. A preemptor whose request cannot be read is a bad request here
        (filter turns every node down for it, unresolvable, so kube-scheduler has no node to
        preempt on; should it ask, it must not evict pods for a pod no node can take)."""
        demand = self._demand(_pod(args))
        proposed: dict[str, tuple[list[str], int]] = {}
        meta = args.get("NodeNameToMetaVictims")
        full = args.get("NodeNameToVictims")
        for key, source in (("NodeNameToMetaVictims", meta), ("NodeNameToVictims", full)):
            if source is None:
                continue
            nodes = _object(source, key)
            if len(nodes) > MAX_NODES:
                raise BadRequest(f"{key}: {len(nodes)} nodes, more than {MAX_NODES}")
            for node, victims in nodes.items():
                if victims is None:
                    proposed[node] = ([], 0)
                    continue
                v = _object(victims, f"{key}.{node}")
                pods = v.get("Pods")
                if pods is None:
                    pods = []
                if not isinstance(pods, list):
                    raise BadRequest(f"{key}.{node}.Pods: expected a list")
                if len(pods) > MAX_VICTIMS:
                    raise BadRequest(f"{key}.{node}.Pods: {len(pods)} victims, more than {MAX_VICTIMS}")
                uids: list[str] = []
                for i, p in enumerate(pods):
                    p = _object(p, f"{key}.{node}.Pods[{i}]")
                    if key == "NodeNameToMetaVictims":
                        uid = p.get("UID")
                    else:
                        victim_meta = p.get("metadata")
                        uid = _object(victim_meta, f"{key}.{node}.Pods[{i}].metadata").get("uid") if victim_meta is not None else None
                    if not isinstance(uid, str):
                        raise BadRequest(f"{key}.{node}.Pods[{i}]: no uid")
                    uids.append(uid)
                pdb = v.get("NumPDBViolations")
                if pdb is None:
                    pdb = 0
                if not isinstance(pdb, int) or isinstance(pdb, bool):
                    raise BadRequest(f"{key}.{node}.NumPDBViolations: expected an integer")
                if not 0 <= pdb <= podspec.INT64_MAX:
                    raise BadRequest(f"{key}.{node}.NumPDBViolations: {pdb} is not in 0..{podspec.INT64_MAX}")
                proposed[node] = (uids, pdb)
        if demand.error:
            raise BadRequest(f"Pod: its request cannot be read: {demand.error}")
        chosen = self.decider.preempt(demand, proposed)
        return {
            "NodeNameToMetaVictims": {
                node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb}
                for node, (uids, pdb) in chosen.items()
            }
        }


#: Longest request line or header line accepted (bytes), and most header lines.
MAX_LINE = 65536
MAX_HEADERS = 100

_TOO_MANY = b"too many connections open; try again\n"
_TURNED_AWAY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(_TOO_MANY)).encode() + b"\r\nConnection: close\r\n\r\n" + _TOO_MANY)
#: The answer to a request that needs kube-scheduler's client certificate and came without one.
_NO_CLIENT_CERT = (b"client certificate required: filter, prioritize, bind and preempt answer only kube-scheduler, "
                   b"which presents the certificate named in its extender tlsConfig (certFile, keyFile)\n")


class _Reader:
    """Buffered reads from one socket, each against ``deadline`` (``time.monotonic()``): every
    wait for bytes lasts at most until then, so a client that stalls, or sends a byte now and
    then, is dropped once it has passed (:class:`TimeoutError`), not once it stops for a
    whole timeout at a time."""

    CHUNK = 65536
    BODY_CHUNK = 2**20

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.deadline = math.inf

    def _wait(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)

    def _fill(self) -> bool:
        """Reads what has arrived into the buffer; False at the end of the stream."""
        self._wait()
        data = self.sock.recv(self.CHUNK)
        self.buf += data
        return bool(data)

    def ready(self) -> bool:
        """Waits until a byte is there; False when the peer closed first."""
        return bool(self.buf) or self._fill()

    def readline(self, limit: int) -> bytes:
        """One line with its ``\\n``, at most ``limit`` bytes (a longer one comes back cut, without
        its end); what is left at the end of the stream (b"" when nothing)."""
        start = 0
        while True:
            end = self.buf.find(b"\n", start, limit)
            if end >= 0:
                return self._take(end + 1)
            if len(self.buf) >= limit:
                return self._take(limit)
            start = len(self.buf)
            if not self._fill():
                return self._take(len(self.buf))

    def read(self, n: int) -> bytes | bytearray:
        """``n`` bytes (fewer at the end of the stream). The buffer grows as they arrive, never
        ahead of them: a Content-Length alone claims no memory."""
        if len(self.buf) >= n:
            return self._take(n)
        out, self.buf = self.buf, bytearray()
        while len(out) < n:
            self._wait()
            data = self.sock.recv(min(n - len(out), self.BODY_CHUNK))
            if not data:
                break
            out += data
        return out

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class _Connection(socketserver.BaseRequestHandler):
    """One client connection: HTTP/1.1 requests read and answered in order, kept alive as
    kube-scheduler's client expects. Only what an extender needs: GET and POST with a
    Content-Length body (no chunked bodies), ``Expect: 100-continue``, ``Connection: close``,
    HTTP/1.0 without keep-alive unless asked. http.server's handler parses every header block
    with the email package, which cost more per request than small decisions do.

    Deadlines (:class:`Limits`): a request must arrive in whole within ``read_timeout`` of its
    first byte (else 408 and closed), the next one begin within ``idle_timeout`` (else closed),
    and an answer be taken within ``read_timeout``."""

    server: ExtenderHTTPServer
    request: socket.socket

    def setup(self) -> None:
        try:  # small answers must not wait for the peer's delayed ACK
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.reader = _Reader(self.request)

    def handle(self) -> None:
        limits = self.server.limits
        dropped = self.server.app.metrics.connections_dropped
        try:
            while True:
                self.reader.deadline = time.monotonic() + limits.idle_timeout
                try:
                    if not self.reader.ready():
                        return
                except TimeoutError:
                    dropped.labels("idle-timeout").inc()
                    return
                self.reader.deadline = time.monotonic() + limits.read_timeout
                try:
                    if not self._one():
                        return
                except TimeoutError:
                    dropped.labels("read-timeout").inc()
                    self._send(Answer(408, b"request not received in whole within "
                                      + f"{limits.read_timeout:g} s\n".encode(), "text/plain"),
                               keep=False, http10=False, timeout=1.0)
                    return
        except (OSError, ValueError):  # the peer went away, or TLS ended mid-request
            return

    def _refuse(self, status: int, reason: str, what: str = "bad request") -> bool:
        """Answers a request not read and closes: what follows it cannot be trusted."""
        self.server.app.metrics.http_refused.labels(str(status)).inc()
        self._send(Answer(status, f"{what}: {reason}\n".encode(), "text/plain"), keep=False, http10=False)
        return False

    def _one(self) -> bool:
        """Reads and answers one request; False when the connection is to close."""
        line = self.reader.readline(MAX_LINE + 1)
        if not line:
            return False
        if len(line) > MAX_LINE:
            return self._refuse(414, "request line too long")
        parts = line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return self._refuse(400, f"malformed request line {line[:100]!r}")
        method, target, version = parts
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            return self._refuse(505, f"HTTP version {version[:20]} not supported")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            h = self.reader.readline(MAX_LINE + 1)
            if len(h) > MAX_LINE:
                return self._refuse(431, "header line too long")
            if h in (b"\r\n", b"\n", b""):
                break
            name, sep, value = h.decode("latin-1").partition(":")
            key = name.strip().lower()
            if not sep or not key:
                return self._refuse(400, f"malformed header line {h[:100]!r}")
            value = value.strip()
            if key in headers and key in ("content-length", "transfer-encoding") and headers[key] != value:
                return self._refuse(400, f"conflicting {key} headers")
            headers[key] = value
        else:
            return self._refuse(431, f"more than {MAX_HEADERS} header lines")
        http10 = version == "HTTP/1.0"
        tokens = headers.get("connection", "").lower()
        keep = "keep-alive" in tokens if http10 else "close" not in tokens
        path = target.split("?", 1)[0]
        app = self.server.app
        if self.server.client_auth and tls.needs_client_cert(method, path) and not self._verified_peer():
            app.metrics.http_refused.labels("403").inc()
            self._send(Answer(403, _NO_CLIENT_CERT, "text/plain"), keep=False, http10=http10)
            return False
        if method == "GET":
            return self._send(app.handle_get(path), keep, http10) and keep
        if method != "POST":
            self._send(Answer(501, f"method {method[:20]} not supported\n".encode(), "text/plain"), False, http10)
            return False
        if "transfer-encoding" in headers:
            return self._refuse(400, "Content-Length required (chunked bodies are not accepted)")
        length_text = headers.get("content-length", "")
        if not (length_text.isascii() and length_text.isdigit()):  # "²" is a digit to isdigit(), not to int()
            return self._refuse(400, "Content-Length required")
        max_body = self.server.limits.max_body
        if len(length_text) > 20 or int(length_text) > max_body:  # int() of 5,000 digits raises
            # refused from the header, before reading: the unread body ends the connection
            return self._refuse(413, f"body of {length_text[:40]} bytes exceeds {max_body}")
        length = int(length_text)
        if not self.server.admit(length):
            return self._refuse(503, f"{self.server.limits.max_body_in_flight} bytes of request bodies are in "
                                     "flight; try again", "busy")
        try:
            if headers.get("expect", "").lower() == "100-continue" and not http10:
                if not self._write(b"HTTP/1.1 100 Continue\r\n\r\n", self.server.limits.read_timeout):
                    return False
            body = self.reader.read(length)
            if len(body) < length:
                return False
            answer = app.handle_post(path, body)
            del body  # a large body's buffer goes back before the answer is written
        finally:  # decided: its bytes are no longer in flight (before the answer goes out)
            self.server.admitted(length)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s -> %d", self.client_address[0], method, path, answer.status)
        sent = self._send(answer, keep, http10)
        del answer
        if length >= LARGE_BODY:
            release_memory()
        return sent and keep

    def _verified_peer(self) -> bool:
        """Whether the client presented a certificate (the handshake verified it against the CA)."""
        sock = self.request
        return isinstance(sock, ssl.SSLSocket) and bool(sock.getpeercert(binary_form=True))

    def _send(self, answer: Answer, keep: bool, http10: bool, timeout: float = 0.0) -> bool:
        """Writes an answer; False when it was not taken in time (the connection then closes)."""
        try:
            phrase = http.HTTPStatus(answer.status).phrase
        except ValueError:
            phrase = ""
        connection = ("Connection: keep-alive\r\n" if http10 else "") if keep else "Connection: close\r\n"
        head = (f"HTTP/1.1 {answer.status} {phrase}\r\nContent-Type: {answer.content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\n{connection}\r\n")
        # one write: one segment for small answers
        return self._write(head.encode("latin-1") + answer.body, timeout or self.server.limits.read_timeout)

    def _write(self, data: bytes, timeout: float) -> bool:
        self.request.settimeout(timeout)  # sendall's timeout bounds the whole write
        try:
            self.request.sendall(data)
        except TimeoutError:
            self.server.app.metrics.connections_dropped.labels("write-timeout").inc()
            return False
        return True


class ExtenderHTTPServer(socketserver.ThreadingTCPServer):
    """A thread per connection (kube-scheduler keeps a few alive and calls on each in turn), at
    most ``limits.max_connections`` of them: a connection beyond is answered 503 (plain HTTP;
    with TLS it is closed) and closed on the accepting thread, no thread started for it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], app: ExtenderApp, max_body: int = DEFAULT_MAX_BODY,
        tls: ssl.SSLContext | None = None, limits: Limits | None = None,
    ) -> None:
        self.app = app
        self.limits = limits if limits is not None else Limits(max_body=max_body)
        self.tls = tls
        self.request_queue_size = self.limits.backlog  # listen()'s backlog, read by server_activate
        self._open = 0
        self._in_flight = 0  # bytes of bodies admitted and not yet answered
        self._open_lock = threading.Lock()
        super().__init__(address, _Connection)

    def admit(self, length: int) -> bool:
        """Counts a body of ``length`` bytes in flight, unless that would pass
        ``limits.max_body_in_flight`` while other bodies are (one alone is always admitted)."""
        with self._open_lock:
            if self._in_flight and self._in_flight + length > self.limits.max_body_in_flight:
                return False
            self._in_flight += length
            return True

    def admitted(self, length: int) -> None:
        with self._open_lock:
            self._in_flight -= length

    @property
    def max_body(self) -> int:
        return self.limits.max_body

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def client_auth(self) -> bool:
        """Client certificates are asked for (a client CA is set): POSTs need one (:mod:`scheduler_ext.tls`)."""
        return self.tls is not None and self.tls.verify_mode != ssl.CERT_NONE

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            full = self._open >= self.limits.max_connections
            if not full:
                self._open += 1
        if full:
            self.app.metrics.connections_refused.inc()
            log.debug("turned away %s: %d connections open", client_address, self.limits.max_connections)
            if self.tls is None:
                try:
                    request.setblocking(False)  # the accepting thread never waits on a client
                    request.send(_TURNED_AWAY)
                except OSError:
                    pass
            self.shutdown_request(request)
            return
        self.app.metrics.connections.inc()
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: the connection is not open
            self._closed()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._closed()

    def _closed(self) -> None:
        with self._open_lock:
            self._open -= 1
        self.app.metrics.connections.dec()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs on the connection's own thread, so a slow or bad client
        # never holds up accepting the next one; it has read_timeout for each of its steps
        if self.tls is not None:
            try:
                request.settimeout(self.limits.read_timeout)
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as err:
                log.info("TLS handshake with %s failed: %s", client_address, err)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def tls_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """Server TLS over these files (reloaded when they change); with ``client_ca`` a certificate
    that a client presents must be signed by it, and every POST needs one (HTTP 403 without),
    while ``/healthz``, ``/readyz`` and ``/metrics`` stay open (:mod:`scheduler_ext.tls`)."""
    return tls.server_context(cert, key, client_ca)


def serve(
    app: ExtenderApp, host: str, port: int, tls: ssl.SSLContext | None = None, max_body: int = DEFAULT_MAX_BODY,
    limits: Limits | None = None,
) -> tuple[ExtenderHTTPServer, threading.Thread]:
    """Starts the server on a thread; port 0 picks a free one (``server.server_address``).
    ``limits`` (when given) wins over ``max_body``."""
    srv = ExtenderHTTPServer((host, port), app, max_body, tls, limits)
    thread = threading.Thread(target=srv.serve_forever, name="extender-http", daemon=True)
    thread.start()
    return srv, thread
