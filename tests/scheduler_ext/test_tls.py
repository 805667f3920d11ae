"""HTTPS with a client CA, as kube-scheduler's enableHTTPS with a TLS config uses it."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scheduler_ext.cache import ClusterCache
from scheduler_ext.server import ExtenderApp, serve, tls_context


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

        anonymous = ssl.create_default_context(cafile=ca_file)
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=anonymous, timeout=30)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()
