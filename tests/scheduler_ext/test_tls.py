"""HTTPS with a client CA, as kube-scheduler's enableHTTPS with a TLS config uses it."""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import ipaddress
import json
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scheduler_ext import certs, tls
from scheduler_ext.cache import ClusterCache
from scheduler_ext.server import ExtenderApp, ExtenderHTTPServer, serve, tls_context

from .conftest import FakePodApi


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey | None, ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    c, k = path.with_suffix(".crt"), path.with_suffix(".key")
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return str(c), str(k)


def test_https_with_client_ca(tmp_path: Path, app_parts: tuple[ClusterCache, object, ExtenderApp]) -> None:
    ca_key = _key()
    ca = _cert("gpupack-test-ca", ca_key, None, None, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca, ca_key)
    srv_key, cli_key = _key(), _key()
    srv_cert, srv_keyfile = _write(tmp_path / "server", _cert("extender", srv_key, ca, ca_key, server=True), srv_key)
    cli_cert, cli_keyfile = _write(tmp_path / "client", _cert("kube-scheduler", cli_key, ca, ca_key), cli_key)

    srv, thread = serve(app_parts[2], "127.0.0.1", 0, tls=tls_context(srv_cert, srv_keyfile, ca_file))
    port = srv.server_address[1]
    try:
        good = ssl.create_default_context(cafile=ca_file)
        good.load_cert_chain(cli_cert, cli_keyfile)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=good, timeout=30)
        conn.request("POST", "/filter", b'{"Pod":{"metadata":{"uid":"u"},"spec":{"containers":[]}},"Nodes":null,"NodeNames":["n-half"]}')
        resp = conn.getresponse()
        assert resp.status == 200 and b'"NodeNames":["n-half"]' in resp.read()
        conn.close()

        # no client certificate: the health and metrics paths answer, the verbs do not
        anonymous = ssl.create_default_context(cafile=ca_file)
        assert request(port, anonymous, "GET", "/healthz")[0] == 200
        assert request(port, anonymous, "POST", "/filter", b"{}")[0] == 403
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


# --- client certificates demanded per path (issue 15: anyone reaching the port could bind) ----


def request(port: int, ctx: ssl.SSLContext, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body is not None else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@dataclasses.dataclass
class Pki:
    folder: Path
    ca: certs.Pair

    def write(self, name: str, pair: certs.Pair) -> tuple[str, str]:
        crt, key = pair.pem()
        (self.folder / f"{name}.crt").write_bytes(crt)
        (self.folder / f"{name}.key").write_bytes(key)
        return str(self.folder / f"{name}.crt"), str(self.folder / f"{name}.key")

    @property
    def ca_file(self) -> str:
        return self.write("ca", self.ca)[0]

    def client(self, name: str = "client") -> ssl.SSLContext:
        """A client that trusts this CA and presents a certificate it signed (as kube-scheduler)."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(*self.write(name, certs.issue(self.ca, certs.CLIENT_NAME, server=False)))
        return ctx

    def anonymous(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    return Pki(folder, certs.new_ca())


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def mtls(pki: Pki, app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> Iterator[ExtenderHTTPServer]:
    """The extender over HTTPS with client auth, as the chart runs it (the server's files are
    the ones a Secret volume holds: tls.crt, tls.key, ca.crt)."""
    cert, key = pki.write("server", certs.issue(pki.ca, "extender", server=True, ips=["127.0.0.1"]))
    srv, thread = serve(app_parts[2], "127.0.0.1", 0, tls=tls_context(cert, key, pki.ca_file))
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def state(api: FakePodApi, cache: ClusterCache) -> Any:
    return json.dumps(sorted(api.pods.items()), sort_keys=True), list(api.bindings), api.patches, cache.held("uid-want1")


def bind_body(api: FakePodApi) -> bytes:
    pod = api.pods[("default", "want1")]["metadata"]
    return json.dumps({"PodName": "want1", "PodNamespace": "default", "PodUID": pod["uid"], "Node": "n-empty"}).encode()


PREEMPT = json.dumps({"Pod": {"metadata": {"uid": "u", "name": "p", "namespace": "default"}, "spec": {"containers": []}},
                      "NodeNameToVictims": {}, "NodeNameToMetaVictims": {"n-full": {"Pods": [{"UID": "uid-a"}]}}}).encode()


def test_bind_without_a_client_certificate_is_refused_and_changes_nothing(
        pki: Pki, mtls: ExtenderHTTPServer, app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> None:
    cache, api, app = app_parts
    port = mtls.server_address[1]
    before = state(api, cache)
    for path, body in (("/bind", bind_body(api)), ("/preempt", PREEMPT), ("/filter", b"{}"), ("/prioritize", b"{}"),
                       ("/prioritize-cpu-only", b"{}"), ("/no-such-verb", b"{}")):
        status, text = request(port, pki.anonymous(), "POST", path, body)
        assert status == 403, (path, status, text)
        assert b"client certificate" in text, text
    assert state(api, cache) == before
    assert app.metrics.http_refused.labels("403")._value.get() == 6
    # the same bind with kube-scheduler's certificate goes through (the control)
    status, text = request(port, pki.client(), "POST", "/bind", bind_body(api))
    assert (status, json.loads(text)) == (200, {"Error": ""})
    assert api.bindings == [("default", "want1", "n-empty")]


def test_health_and_metrics_stay_open(pki: Pki, mtls: ExtenderHTTPServer) -> None:
    port = mtls.server_address[1]
    assert request(port, pki.anonymous(), "GET", "/healthz") == (200, b"ok\n")
    assert request(port, pki.anonymous(), "GET", "/readyz")[0] == 200
    status, text = request(port, pki.anonymous(), "GET", "/metrics")
    assert status == 200 and b"gpupack_extender_http_refused" in text


def test_a_certificate_of_another_ca_fails_the_handshake(pki: Pki, mtls: ExtenderHTTPServer, tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other")
    ctx = ssl.create_default_context(cafile=pki.ca_file)  # trusts the extender, presents a stranger's cert
    ctx.load_cert_chain(*stranger.write("client", certs.issue(stranger.ca, certs.CLIENT_NAME, server=False)))
    for method, path in (("GET", "/healthz"), ("POST", "/bind")):
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            request(mtls.server_address[1], ctx, method, path, b"{}" if method == "POST" else None)


def test_without_a_client_ca_anyone_with_tls_may_post(pki: Pki,
                                                       app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> None:
    """tls.clientAuth.enabled=false: HTTPS only (the operator's choice), nothing demanded."""
    cert, key = pki.write("server", certs.issue(pki.ca, "extender", server=True, ips=["127.0.0.1"]))
    srv, thread = serve(app_parts[2], "127.0.0.1", 0, tls=tls_context(cert, key))
    try:
        status, text = request(srv.server_address[1], pki.anonymous(), "POST", "/filter",
                               b'{"Pod":{"metadata":{"uid":"u"},"spec":{"containers":[]}},"NodeNames":["n-half"]}')
        assert status == 200, text
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.parametrize("path, method, needed", [
    ("/healthz", "GET", False), ("/readyz", "GET", False), ("/metrics", "GET", False), ("/metrics/", "GET", False),
    ("/bind", "POST", True), ("/filter", "POST", True), ("/healthz", "POST", True), ("/other", "GET", True),
])
def test_which_requests_need_a_certificate(path: str, method: str, needed: bool) -> None:
    assert tls.needs_client_cert(method, path) is needed


def test_renewed_files_are_used_without_a_restart(pki: Pki, tmp_path: Path,
                                                   app_parts: tuple[ClusterCache, FakePodApi, ExtenderApp]) -> None:
    """A Secret volume swaps the files: the next handshakes use the new certificate and the new
    CA (here a rotated CA: the old client certificate is refused from then on)."""
    cert, key = pki.write("server", certs.issue(pki.ca, "extender", server=True, ips=["127.0.0.1"]))
    ca_file = pki.ca_file
    srv, thread = serve(app_parts[2], "127.0.0.1", 0, tls=tls.server_context(cert, key, ca_file, check_every=0.0))
    port = srv.server_address[1]
    try:
        old_client = pki.client("old-client")
        assert request(port, old_client, "POST", "/filter", b"{}")[0] == 400  # through: a bad body, not 403
        rotated = make_pki(tmp_path / "rotated")
        new_cert, new_key = rotated.write("server", certs.issue(rotated.ca, "extender", server=True, ips=["127.0.0.1"]))
        for new, old in ((new_cert, cert), (new_key, key), (rotated.ca_file, ca_file)):
            os.replace(new, old)
        assert request(port, rotated.client(), "POST", "/filter", b"{}")[0] == 400
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            request(port, old_client, "GET", "/healthz")  # it no longer trusts the server either
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
