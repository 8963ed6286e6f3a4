"""Certificates and the kubeconfig of a local control plane, as envtest generates them.

A CA, serving certificates for etcd and kube-apiserver on 127.0.0.1, an admin client
certificate in ``system:masters`` and a service-account key pair, written under one
``pki`` directory; the kubeconfig points at the admin certificate. Pure file generation:
starting the processes that use them is :mod:`kubevisor.devenv.controlplane`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_key(path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(
    *,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    server: bool = False,
    client: bool = False,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(minutes=5))
        .not_valid_after(_now() + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def generate_pki(pki: Path) -> None:
    """CA, serving cert, admin client cert (system:masters) and a service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("kubevisor-dev-ca")
    ca = _issue(subject=ca_name, key=ca_key, issuer=ca_name, issuer_key=ca_key, ca=True)
    _write_key(pki / "ca.key", ca_key)
    _write_cert(pki / "ca.crt", ca)

    for stem, subject, server, client in (
        ("apiserver", _name("kube-apiserver"), True, False),
        ("admin", _name("kubevisor-admin", "system:masters"), False, True),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            subject=subject,
            key=key,
            issuer=ca_name,
            issuer_key=ca_key,
            ca=False,
            server=server,
            client=client,
        )
        _write_key(pki / f"{stem}.key", key)
        _write_cert(pki / f"{stem}.crt", cert)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki / "sa.key", sa_key)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def issue_client(pki: Path, stem: str, *, cn: str, org: str | None = None) -> None:
    """Another client certificate signed by the CA in ``pki`` (``<stem>.crt``/``.key``),
    e.g. a kubelet's node identity ``CN=system:node:<name>, O=system:nodes``."""
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(
        subject=_name(cn, org), key=key, issuer=ca.subject, issuer_key=ca_key, ca=False,
        client=True,
    )  # fmt: skip
    _write_key(pki / f"{stem}.key", key)
    _write_cert(pki / f"{stem}.crt", cert)


def write_kubeconfig(path: Path, *, server: str, pki: Path, user: str = "admin") -> None:
    """A kubeconfig with absolute file references, usable by kubectl, kopf and the clients.
    ``user``: the stem of the client certificate in ``pki`` (see :func:`issue_client`)."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubevisor-dev",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": "kubevisor-admin",
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "kubevisor-dev",
                "context": {
                    "cluster": "kubevisor-dev",
                    "user": "kubevisor-admin",
                    "namespace": "default",
                },
            }
        ],
        "current-context": "kubevisor-dev",
    }
    # JSON is valid YAML; no YAML dependency needed here.
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
