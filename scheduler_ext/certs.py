"""``gpupack-extender certs``: the certificates of the extender's mutual TLS, made in the cluster.

Role in the whole: what the chart's certificates Job (``tls.certificates=job``, the mode
``deploy/manifests`` ships with, since a private key must not sit in git) runs once at install
and again whenever an operator re-applies it. It keeps three ``kubernetes.io/tls`` Secrets in
the extender's namespace, creating what is missing and nothing else:

- the CA (``tls.crt``, ``tls.key``): signs the two below; only this Job reads its key;
- the extender's serving certificate (``tls.crt``, ``tls.key``, ``ca.crt``) for the Service's
  DNS names, mounted by the extender;
- kube-scheduler's client certificate (``tls.crt``, ``tls.key``, ``ca.crt``), mounted by
  gpupack-scheduler and named in its extender ``tlsConfig``.

A certificate is issued again when it is missing, not signed by the CA in the CA Secret, does
not name the Service, or expires within ``--renew-days``; ``--renew`` issues both again now,
``--rotate-ca`` makes a new CA first (docs/operator-guide.md, "Certificates"). Runs of two Jobs
at once are safe: a create that loses (409) re-reads what won.

The Kubernetes API is reached through :class:`SecretApi` (three calls), so tests hand in a fake.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import Any, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("gpupack-extender.certs")

TLS_TYPE = "kubernetes.io/tls"
#: The CA lives ten years: rotating it needs kube-scheduler restarted (it reads its caFile once).
CA_DAYS = 3650
#: Leaf certificates live a year and are issued again this many days before they end.
LEAF_DAYS = 365
RENEW_DAYS = 30
#: The client certificate's subject: what the extender's log names as its peer.
CLIENT_NAME = "gpupack-scheduler"


class Exists(Exception):
    """The Secret was created meanwhile (HTTP 409)."""


class SecretApi(Protocol):
    def read(self, name: str) -> dict[str, bytes] | None:
        """The Secret's data, decoded; None when it does not exist."""

    def create(self, name: str, data: dict[str, bytes]) -> None:
        """Creates a ``kubernetes.io/tls`` Secret; raises :class:`Exists` when it exists."""

    def replace(self, name: str, data: dict[str, bytes]) -> None:
        """Replaces its data."""


@dataclasses.dataclass(frozen=True)
class Names:
    """The three Secrets and the Service whose DNS names the serving certificate carries."""

    namespace: str
    service: str
    ca_secret: str
    server_secret: str
    client_secret: str

    @property
    def dns_names(self) -> list[str]:
        svc, ns = self.service, self.namespace
        return [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]


@dataclasses.dataclass(frozen=True)
class Pair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def pem(self) -> tuple[bytes, bytes]:
        return (self.cert.public_bytes(serialization.Encoding.PEM),
                self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_ca(days: int = CA_DAYS, name: str = "gpupack-extender-ca") -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Pair(cert, key)


def issue(ca: Pair, common_name: str, *, server: bool, dns_names: Sequence[str] = (),
          ips: Sequence[str] = (), days: int = LEAF_DAYS) -> Pair:
    """A leaf certificate signed by ``ca``: serving (``server``, with the names as SANs) or client."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Pair(builder.sign(ca.key, hashes.SHA256()), key)


def _load(data: dict[str, bytes] | None) -> Pair | None:
    if not data or "tls.crt" not in data or "tls.key" not in data:
        return None
    try:
        cert = x509.load_pem_x509_certificate(data["tls.crt"])
        key = serialization.load_pem_private_key(data["tls.key"], password=None)
    except ValueError:
        return None
    return Pair(cert, key) if isinstance(key, ec.EllipticCurvePrivateKey) else None


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        return set()


def leaf_problem(data: dict[str, bytes] | None, ca: Pair, dns_names: Sequence[str], renew_days: int) -> str:
    """Why a leaf Secret must be issued again ("" when it is good)."""
    pair = _load(data)
    if pair is None or data is None:
        return "missing"
    if data.get("ca.crt") != ca.cert.public_bytes(serialization.Encoding.PEM) or not _signed_by(pair.cert, ca.cert):
        return "not signed by the current CA"
    if pair.cert.not_valid_after_utc - _now() < datetime.timedelta(days=renew_days):
        return f"expires {pair.cert.not_valid_after_utc:%Y-%m-%d}"
    if not set(dns_names) <= _names_of(pair.cert):
        return "does not name the Service"
    return ""


def _put(api: SecretApi, name: str, data: dict[str, bytes], exists: bool) -> bool:
    """Writes a Secret; False when a create lost to another run (then nothing was written)."""
    if exists:
        api.replace(name, data)
        return True
    try:
        api.create(name, data)
    except Exists:
        return False
    return True


def ensure(api: SecretApi, names: Names, *, renew: bool = False, rotate_ca: bool = False,
           ca_days: int = CA_DAYS, leaf_days: int = LEAF_DAYS, renew_days: int = RENEW_DAYS) -> list[str]:
    """Makes the three Secrets good; returns what it wrote, e.g. ``["ca: missing", ...]``."""
    wrote: list[str] = []
    for _ in range(3):  # a create lost to a concurrent run: read what won and check again
        ca_data = api.read(names.ca_secret)
        ca = None if rotate_ca else _load(ca_data)
        if ca is None:
            ca = new_ca(ca_days)
            if not _put(api, names.ca_secret, dict(zip(("tls.crt", "tls.key"), ca.pem())), ca_data is not None):
                continue
            wrote.append(f"{names.ca_secret}: {'rotated' if rotate_ca else 'missing'}")
            rotate_ca = False
        ca_pem = ca.cert.public_bytes(serialization.Encoding.PEM)
        lost = False
        for secret, server in ((names.server_secret, True), (names.client_secret, False)):
            data = api.read(secret)
            why = "renewed" if renew else leaf_problem(data, ca, names.dns_names if server else (), renew_days)
            if not why:
                continue
            pair = (issue(ca, names.dns_names[2], server=True, dns_names=names.dns_names, days=leaf_days) if server
                    else issue(ca, CLIENT_NAME, server=False, days=leaf_days))
            crt, key = pair.pem()
            if not _put(api, secret, {"tls.crt": crt, "tls.key": key, "ca.crt": ca_pem}, data is not None):
                lost = True
                break
            wrote.append(f"{secret}: {why}")
        if not lost:
            return wrote
        renew = False
    raise RuntimeError("the certificate Secrets kept changing under this run; run it again")


class KubeSecretApi:
    """:class:`SecretApi` over the kubernetes client's ``CoreV1Api``, in one namespace."""

    def __init__(self, core_v1: Any, namespace: str, labels: dict[str, str] | None = None) -> None:
        self.core = core_v1
        self.namespace = namespace
        self.labels = labels or {"app.kubernetes.io/name": "gpupack", "app.kubernetes.io/component": "certs"}

    def _body(self, name: str, data: dict[str, bytes]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret", "type": TLS_TYPE,
                "metadata": {"name": name, "namespace": self.namespace, "labels": self.labels},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    def read(self, name: str) -> dict[str, bytes] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            secret = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return {str(k): base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def create(self, name: str, data: dict[str, bytes]) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.create_namespaced_secret(self.namespace, self._body(name, data))
        except ApiException as err:
            if err.status == 409:
                raise Exists(name) from err
            raise

    def replace(self, name: str, data: dict[str, bytes]) -> None:
        self.core.replace_namespaced_secret(name, self.namespace, self._body(name, data))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpupack-extender certs",
        description="Create (or renew) the Secrets of the extender's mutual TLS: a CA, the extender's serving "
                    "certificate and kube-scheduler's client certificate. Leaves good ones as they are.")
    p.add_argument("--namespace", required=True, help="the extender's namespace (where the Secrets live)")
    p.add_argument("--service", default="gpupack-extender", help="the extender's Service (default %(default)s)")
    p.add_argument("--ca-secret", default="gpupack-extender-ca", help="default %(default)s")
    p.add_argument("--server-secret", default="gpupack-extender-tls", help="default %(default)s")
    p.add_argument("--client-secret", default="gpupack-scheduler-client-tls", help="default %(default)s")
    p.add_argument("--ca-days", type=int, default=CA_DAYS, help="validity of a new CA (default %(default)s)")
    p.add_argument("--days", type=int, default=LEAF_DAYS, help="validity of new leaf certificates (default %(default)s)")
    p.add_argument("--renew-days", type=int, default=RENEW_DAYS,
                   help="issue a leaf again when it ends within this many days (default %(default)s)")
    p.add_argument("--renew", action="store_true", help="issue both leaf certificates again now")
    p.add_argument("--rotate-ca", action="store_true", help="make a new CA and issue both leaf certificates from it")
    p.add_argument("--kubeconfig", default="", help="kubeconfig file; empty: in-cluster config")
    return p


def main(argv: Sequence[str] | None = None, core_v1: Any = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if core_v1 is None:
        from kubernetes import client
        from kubernetes import config as kconfig

        config: Any = kconfig
        if args.kubeconfig:
            config.load_kube_config(config_file=args.kubeconfig)
        else:
            config.load_incluster_config()
        core_v1 = client.CoreV1Api()
    names = Names(args.namespace, args.service, args.ca_secret, args.server_secret, args.client_secret)
    try:
        wrote = ensure(KubeSecretApi(core_v1, args.namespace), names, renew=args.renew, rotate_ca=args.rotate_ca,
                       ca_days=args.ca_days, leaf_days=args.days, renew_days=args.renew_days)
    except Exception as err:  # the Job's log is what an operator reads: one line, the API's reason
        print(f"gpupack-extender certs: {getattr(err, 'reason', None) or err}", file=sys.stderr)
        return 1
    for line in wrote or ["all three Secrets are good; nothing written"]:
        log.info("%s", line)
    if wrote:
        log.info("the extender reloads its certificate by itself; after --rotate-ca restart gpupack-scheduler "
                 "(it reads its caFile once)")
    return 0
