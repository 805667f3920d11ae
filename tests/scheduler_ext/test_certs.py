"""``gpupack-extender certs``: makes what is missing, leaves what is good, renews what is due.

The certificates Job runs it at install and on every later apply, possibly twice at once;
tests/e2e/test_extender_tls.py runs it against the real API server with the Job's own
ServiceAccount, and serves kube-scheduler with what it made.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from scheduler_ext import certs

NAMES = certs.Names("kube-system", "gpupack-extender", "gpupack-extender-ca", "gpupack-extender-tls",
                    "gpupack-scheduler-client-tls")


class FakeSecrets:
    """Secrets by name; ``race`` is a Secret another run creates just before our first create."""

    def __init__(self, race: dict[str, dict[str, bytes]] | None = None) -> None:
        self.data: dict[str, dict[str, bytes]] = {}
        self.writes: list[tuple[str, str]] = []
        self.race = dict(race or {})

    def read(self, name: str) -> dict[str, bytes] | None:
        return dict(self.data[name]) if name in self.data else None

    def create(self, name: str, data: dict[str, bytes]) -> None:
        if name in self.race:
            self.data[name] = self.race.pop(name)
        if name in self.data:
            raise certs.Exists(name)
        self.data[name] = dict(data)
        self.writes.append(("create", name))

    def replace(self, name: str, data: dict[str, bytes]) -> None:
        assert name in self.data
        self.data[name] = dict(data)
        self.writes.append(("replace", name))


def cert(api: FakeSecrets, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(api.data[name]["tls.crt"])


def test_first_run_makes_a_ca_and_both_certificates() -> None:
    api = FakeSecrets()
    wrote = certs.ensure(api, NAMES)
    assert wrote == ["gpupack-extender-ca: missing", "gpupack-extender-tls: missing",
                     "gpupack-scheduler-client-tls: missing"]
    ca, server, client = (cert(api, n) for n in (NAMES.ca_secret, NAMES.server_secret, NAMES.client_secret))
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    assert api.data[NAMES.server_secret]["ca.crt"] == api.data[NAMES.client_secret]["ca.crt"] == \
        ca.public_bytes(serialization.Encoding.PEM)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert sans == ["gpupack-extender", "gpupack-extender.kube-system", "gpupack-extender.kube-system.svc",
                    "gpupack-extender.kube-system.svc.cluster.local"]
    eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    # days: CA ten years, leaves a year (the defaults), to the day
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3650
    assert (server.not_valid_after_utc - server.not_valid_before_utc).days == 365
    # the CA Secret holds a key (the Job signs with it); the leaves hold theirs
    assert set(api.data[NAMES.ca_secret]) == {"tls.crt", "tls.key"}
    assert set(api.data[NAMES.server_secret]) == {"tls.crt", "tls.key", "ca.crt"}


def test_a_second_run_writes_nothing() -> None:
    api = FakeSecrets()
    certs.ensure(api, NAMES)
    before = {n: dict(d) for n, d in api.data.items()}
    assert certs.ensure(api, NAMES) == []
    assert api.data == before


def _expiring(api: FakeSecrets, name: str, days_left: int) -> None:
    ca = certs._load(api.data[NAMES.ca_secret])
    assert ca is not None
    server = name == NAMES.server_secret
    pair = certs.issue(ca, "x", server=server, dns_names=NAMES.dns_names if server else (), days=days_left)
    crt, key = pair.pem()
    api.data[name] = {**api.data[name], "tls.crt": crt, "tls.key": key}


@pytest.mark.parametrize("change, expected", [
    # 10 days left, renewed from 30 days before the end
    (lambda api: _expiring(api, NAMES.server_secret, 10), ["gpupack-extender-tls: expires"]),
    (lambda api: _expiring(api, NAMES.client_secret, 29), ["gpupack-scheduler-client-tls: expires"]),
    # 31 days left: not yet
    (lambda api: _expiring(api, NAMES.server_secret, 31), []),
    (lambda api: api.data.pop(NAMES.client_secret), ["gpupack-scheduler-client-tls: missing"]),
    (lambda api: api.data[NAMES.server_secret].update({"tls.crt": b"not PEM"}), ["gpupack-extender-tls: missing"]),
    # signed by a CA that is not the one in the CA Secret (e.g. the CA Secret was replaced)
    (lambda api: api.data[NAMES.server_secret].update(
        dict(zip(("tls.crt", "tls.key"), certs.issue(certs.new_ca(), "x", server=True, dns_names=NAMES.dns_names).pem()))),
     ["gpupack-extender-tls: not signed by the current CA"]),
], ids=["server-due", "client-due", "not-yet-due", "client-missing", "server-garbled", "server-foreign-ca"])
def test_only_what_is_wrong_is_issued_again(change: Any, expected: list[str]) -> None:
    api = FakeSecrets()
    certs.ensure(api, NAMES)
    ca_before = api.data[NAMES.ca_secret]
    change(api)
    wrote = certs.ensure(api, NAMES)
    assert [w.split(" 20")[0] for w in wrote] == expected  # "expires 2026-..." without its date
    assert api.data[NAMES.ca_secret] == ca_before
    for name in (NAMES.server_secret, NAMES.client_secret):
        cert(api, name).verify_directly_issued_by(cert(api, NAMES.ca_secret))


def test_another_service_name_is_a_new_serving_certificate() -> None:
    api = FakeSecrets()
    certs.ensure(api, NAMES)
    renamed = certs.Names("kube-system", "gpu-extender", NAMES.ca_secret, NAMES.server_secret, NAMES.client_secret)
    assert certs.ensure(api, renamed) == ["gpupack-extender-tls: does not name the Service"]


def test_renew_and_rotate() -> None:
    api = FakeSecrets()
    certs.ensure(api, NAMES)
    ca = api.data[NAMES.ca_secret]
    leaf = api.data[NAMES.server_secret]["tls.crt"]
    assert certs.ensure(api, NAMES, renew=True) == ["gpupack-extender-tls: renewed", "gpupack-scheduler-client-tls: renewed"]
    assert api.data[NAMES.ca_secret] == ca and api.data[NAMES.server_secret]["tls.crt"] != leaf
    wrote = certs.ensure(api, NAMES, rotate_ca=True)
    assert wrote == ["gpupack-extender-ca: rotated", "gpupack-extender-tls: not signed by the current CA",
                     "gpupack-scheduler-client-tls: not signed by the current CA"]
    assert api.data[NAMES.ca_secret] != ca
    assert api.data[NAMES.client_secret]["ca.crt"] == api.data[NAMES.ca_secret]["tls.crt"]


def test_two_runs_at_once_agree_on_one_ca() -> None:
    """Another Job created the CA between our read and our create: we sign with theirs."""
    theirs = certs.new_ca()
    api = FakeSecrets(race={NAMES.ca_secret: dict(zip(("tls.crt", "tls.key"), theirs.pem()))})
    certs.ensure(api, NAMES)
    assert cert(api, NAMES.ca_secret) == theirs.cert
    cert(api, NAMES.server_secret).verify_directly_issued_by(theirs.cert)
    assert ("create", NAMES.ca_secret) not in api.writes


def test_the_command_line() -> None:
    args = certs.parser().parse_args(["--namespace", "gpu", "--renew-days", "7"])
    assert (args.namespace, args.service, args.renew_days, args.days) == ("gpu", "gpupack-extender", 7, 365)
    assert datetime.timedelta(days=certs.RENEW_DAYS) < datetime.timedelta(days=certs.LEAF_DAYS)
