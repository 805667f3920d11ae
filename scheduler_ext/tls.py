"""The extender's TLS: server certificate files reloaded when they change, client certificates
requested at the handshake and demanded per path.

Role in the whole: what :func:`scheduler_ext.server.tls_context` builds. With a client CA the
handshake *requests* a certificate (``CERT_OPTIONAL``): one that is presented must chain to the
CA or the handshake fails, but a client without one (the kubelet's probes, Prometheus) still
connects, and :func:`needs_client_cert` says which requests the server then answers 403:
every POST (filter, prioritize, bind, preempt: kube-scheduler sends its certificate on every
call), never ``/healthz``, ``/readyz`` or ``/metrics``.

Certificates are rotated by replacing the files (a Secret volume swaps them at once): a
handshake at most :data:`RELOAD_SECONDS` after the change uses the new ones, with no restart.
The switch happens in the handshake's server-name callback, which OpenSSL calls for every
ClientHello, with or without SNI.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time

log = logging.getLogger(__name__)

#: How often (seconds, at most once per handshake) the files are checked for a change.
RELOAD_SECONDS = 10.0
#: Paths anyone may GET without a client certificate.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def needs_client_cert(method: str, path: str) -> bool:
    """Whether a request must come with a verified client certificate (when client auth is on)."""
    return method != "GET" or path.rstrip("/") not in OPEN_PATHS


def _build(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class _Files:
    """The current context for a set of files, rebuilt when any of them changes."""

    def __init__(self, cert: str, key: str, client_ca: str, check_every: float) -> None:
        self.paths = (cert, key, client_ca)
        self.check_every = check_every
        self.context = _build(cert, key, client_ca)
        self._stamp = self._stat()
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for p in self.paths:
            if not p:
                continue
            try:
                st = os.stat(p)  # follows a Secret volume's ..data link to the file's current copy
            except OSError:
                out.append((0, 0, 0))
                continue
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return self.context
        with self._lock:
            if now - self._checked < self.check_every:
                return self.context
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                try:
                    self.context = _build(*self.paths)
                except (OSError, ssl.SSLError, ValueError) as err:  # half-written files: try again later
                    log.warning("TLS files changed but do not load (%s); serving with the previous ones", err)
                else:
                    self._stamp = stamp
                    log.info("TLS certificate files changed: new connections use them")
            return self.context


def server_context(cert: str, key: str, client_ca: str = "", check_every: float = RELOAD_SECONDS) -> ssl.SSLContext:
    """A server context over these PEM files; with ``client_ca``, client certificates are
    requested and verified (``verify_mode`` is ``CERT_OPTIONAL``, see :func:`needs_client_cert`)."""
    files = _Files(cert, key, client_ca, check_every)
    outer = files.context

    def switch(conn: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, ctx: ssl.SSLContext) -> None:
        fresh = files.current()
        if fresh is not ctx:
            conn.context = fresh

    outer.sni_callback = switch
    return outer
