"""The extender's HTTP edge: kube-scheduler's extender/v1 JSON in, the decider's answers out.

:class:`ExtenderApp` is transport-free (verb + body bytes -> status + JSON); the handler
only reads the body, calls it and writes the answer. Every request body is validated before
anything is decided: a malformed or oversized body gets HTTP 400 with the reason, an
unknown node a per-node failure, and no exception escapes as a 500 traceback.
"""

from __future__ import annotations

import dataclasses
import http
import json
import logging
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy
import orjson

from scheduler_ext import wire
from scheduler_ext.binder import Binder
from scheduler_ext.cache import ClusterCache
from scheduler_ext.decide import Decider
from scheduler_ext.metrics import Metrics
from scheduler_ext.podspec import PodDemand, pod_demand

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); a full NodeList of 5,000 nodes is some tens of MB.
DEFAULT_MAX_BODY = 256 * 2**20


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
        try:
            "".join(names)  # refuses anything but strings, at C speed
        except TypeError as err:
            raise BadRequest("NodeNames: expected a list of strings or null") from err
        return names, None
    if nodes is None:
        return [], None
    nodes = _object(nodes, "Nodes")
    items = nodes.get("items") or []
    if not isinstance(items, list):
        raise BadRequest("Nodes.items: expected a list")
    out: list[str] = []
    for i, n in enumerate(items):
        name = (_object(n, f"Nodes.items[{i}]").get("metadata") or {}).get("name")
        if not isinstance(name, str):
            raise BadRequest(f"Nodes.items[{i}].metadata.name: expected a string")
        out.append(name)
    return out, items


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


class ExtenderApp:
    """The verbs, without HTTP."""

    def __init__(self, cache: ClusterCache, decider: Decider, binder: Binder | None, metrics: Metrics) -> None:
        self.cache = cache
        self.decider = decider
        self.binder = binder
        self.metrics = metrics
        self._last_demand: tuple[bytes, PodDemand] | None = None
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
            return Answer(200 if ok else 503, b"ok\n" if ok else b"cache not synced yet\n", "text/plain")
        if path == "/metrics":
            return Answer(200, self.metrics.exposition(), "text/plain; version=0.0.4")
        return Answer(404, b"not found\n", "text/plain")

    def handle_post(self, path: str, body: bytes) -> Answer:
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
        except Exception as err:  # the scheduler gets a reason, never a traceback
            log.exception("%s failed", verb)
            self.metrics.decisions.labels(verb, "error").inc()
            return self._error(verb, f"gpupack: internal error in {verb}: {err}")
        finally:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - start)

    def _error(self, verb: str, message: str) -> Answer:
        if verb == "filter":
            return _json(200, {"Nodes": None, "NodeNames": None, "FailedNodes": None,
                               "FailedAndUnresolvableNodes": None, "Error": message})
        if verb == "bind":
            return _json(200, {"Error": message})
        return Answer(500, (message + "\n").encode(), "text/plain")

    def filter(self, args: dict[str, Any]) -> wire.ExtenderFilterResult:
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
        return result

    def _demand(self, pod: dict[str, Any]) -> PodDemand:
        """:func:`pod_demand` of ``pod``. kube-scheduler sends prioritize the Pod it sent filter,
        so the last Pod read and its demand are kept: a Pod whose JSON is the same, byte for byte
        (``1`` and ``1.0`` are equal in Python, not to :func:`pod_demand`), is not read again."""
        text = orjson.dumps(pod)
        last = self._last_demand
        if last is not None and last[0] == text:
            return last[1]
        demand = pod_demand(pod)
        self._last_demand = (text, demand)
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
        error = self.binder.bind(bargs)
        if not error:
            self.metrics.binds.labels("no-hold" if not held else "held-node" if held == bargs["Node"] else "other-node").inc()
        return {"Error": error}

    def preempt(self, args: dict[str, Any]) -> wire.ExtenderPreemptionResult:
        pod = _pod(args)
        proposed: dict[str, tuple[list[str], int]] = {}
        meta = args.get("NodeNameToMetaVictims")
        full = args.get("NodeNameToVictims")
        for key, source in (("NodeNameToMetaVictims", meta), ("NodeNameToVictims", full)):
            if source is None:
                continue
            for node, victims in _object(source, key).items():
                if victims is None:
                    proposed[node] = ([], 0)
                    continue
                v = _object(victims, f"{key}.{node}")
                pods = v.get("Pods") or []
                if not isinstance(pods, list):
                    raise BadRequest(f"{key}.{node}.Pods: expected a list")
                uids: list[str] = []
                for i, p in enumerate(pods):
                    p = _object(p, f"{key}.{node}.Pods[{i}]")
                    uid = p.get("UID") if key == "NodeNameToMetaVictims" else (p.get("metadata") or {}).get("uid")
                    if not isinstance(uid, str):
                        raise BadRequest(f"{key}.{node}.Pods[{i}]: no uid")
                    uids.append(uid)
                pdb = v.get("NumPDBViolations") or 0
                if not isinstance(pdb, int):
                    raise BadRequest(f"{key}.{node}.NumPDBViolations: expected an integer")
                proposed[node] = (uids, pdb)
        chosen = self.decider.preempt(pod_demand(pod), proposed)
        return {
            "NodeNameToMetaVictims": {
                node: {"Pods": [{"UID": u} for u in uids], "NumPDBViolations": pdb}
                for node, (uids, pdb) in chosen.items()
            }
        }


#: Longest request line or header line accepted (bytes), and most header lines.
MAX_LINE = 65536
MAX_HEADERS = 100


class _Connection(socketserver.StreamRequestHandler):
    """One client connection: HTTP/1.1 requests read and answered in order, kept alive as
    kube-scheduler's client expects. Only what an extender needs: GET and POST with a
    Content-Length body (no chunked bodies), ``Expect: 100-continue``, ``Connection: close``,
    HTTP/1.0 without keep-alive unless asked. http.server's handler parses every header block
    with the email package, which cost more per request than small decisions do."""

    disable_nagle_algorithm = True  # small answers must not wait for the peer's delayed ACK
    server: ExtenderHTTPServer

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except (OSError, ValueError):  # the peer went away, or TLS ended mid-request
            return

    def _refuse(self, status: int, reason: str) -> bool:
        """Answers an unreadable request and closes: what follows it cannot be trusted."""
        self._send(Answer(status, f"bad request: {reason}\n".encode(), "text/plain"), keep=False, http10=False)
        return False

    def _one(self) -> bool:
        """Reads and answers one request; False when the connection is to close."""
        line = self.rfile.readline(MAX_LINE + 1)
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
            h = self.rfile.readline(MAX_LINE + 1)
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
        if method == "GET":
            self._send(app.handle_get(path), keep, http10)
            return keep
        if method != "POST":
            self._send(Answer(501, f"method {method[:20]} not supported\n".encode(), "text/plain"), False, http10)
            return False
        if "transfer-encoding" in headers:
            return self._refuse(400, "Content-Length required (chunked bodies are not accepted)")
        length_text = headers.get("content-length", "")
        if not length_text.isdigit():
            return self._refuse(400, "Content-Length required")
        length = int(length_text)
        if length > self.server.max_body:
            # refused from the header, before reading: the unread body ends the connection
            return self._refuse(400, f"body of {length} bytes exceeds {self.server.max_body}")
        if headers.get("expect", "").lower() == "100-continue" and not http10:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length)
        if len(body) < length:
            return False
        answer = app.handle_post(path, body)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s -> %d", self.client_address[0], method, path, answer.status)
        self._send(answer, keep, http10)
        return keep

    def _send(self, answer: Answer, keep: bool, http10: bool) -> None:
        try:
            phrase = http.HTTPStatus(answer.status).phrase
        except ValueError:
            phrase = ""
        connection = ("Connection: keep-alive\r\n" if http10 else "") if keep else "Connection: close\r\n"
        head = (f"HTTP/1.1 {answer.status} {phrase}\r\nContent-Type: {answer.content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\n{connection}\r\n")
        self.wfile.write(head.encode("latin-1") + answer.body)  # one write: one segment for small answers


class ExtenderHTTPServer(socketserver.ThreadingTCPServer):
    """A thread per connection (kube-scheduler keeps a few alive and calls on each in turn)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], app: ExtenderApp, max_body: int = DEFAULT_MAX_BODY,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.tls = tls
        super().__init__(address, _Connection)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # the TLS handshake runs on the connection's own thread, so a slow or bad client
        # never holds up accepting the next one
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as err:
                log.info("TLS handshake with %s failed: %s", client_address, err)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection from %s ended with an error", client_address, exc_info=True)


def tls_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """Server TLS; with ``client_ca`` every client must present a certificate signed by it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def serve(
    app: ExtenderApp, host: str, port: int, tls: ssl.SSLContext | None = None, max_body: int = DEFAULT_MAX_BODY
) -> tuple[ExtenderHTTPServer, threading.Thread]:
    """Starts the server on a thread; port 0 picks a free one (``server.server_address``)."""
    srv = ExtenderHTTPServer((host, port), app, max_body, tls)
    thread = threading.Thread(target=srv.serve_forever, name="extender-http", daemon=True)
    thread.start()
    return srv, thread
