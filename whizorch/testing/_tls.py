"""Throwaway certificates for TLS and mTLS tests: a CA, a server and a client cert.

The server certificate names ``127.0.0.1`` and ``localhost`` and carries both the
serverAuth and clientAuth usages: etcd's own gRPC gateway dials the server with the
server certificate, so with ``--client-cert-auth`` it must be valid as a client too.
The client certificate's common name is an etcd user name: with ``--client-cert-auth``
and auth enabled, etcd authenticates the request as that user.

``cryptography`` is imported when certificates are made, so importing
`whizorch.testing` works without it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from whizorch.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["TLSFiles", "generate_tls", "make_client_cert"]


@attrs.frozen
class TLSFiles:
    """PEM files written by `generate_tls`."""

    directory: Path
    """Where the files are."""
    ca_cert: Path
    """The CA certificate: etcd's ``--trusted-ca-file`` and the client's trust root."""
    ca_key: Path
    """The CA's private key (to issue more client certificates)."""
    server_cert: Path
    """Server certificate (SAN IP 127.0.0.1, DNS localhost): etcd's ``--cert-file``."""
    server_key: Path
    """Server key: etcd's ``--key-file``."""
    client_cert: Path
    """Client certificate whose common name is `client_user`."""
    client_key: Path
    """The client certificate's key."""
    client_user: str
    """Common name of the client certificate (the etcd user under client-cert auth)."""


def _ec_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject_cn: str,
    issuer: x509.Name | None,
    public_key: Any,
    valid_for: dt.timedelta,
) -> x509.CertificateBuilder:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "whizorch tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject_cn),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer if issuer is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # an hour of slack for clocks that disagree a little
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server: bool,
    hosts: tuple[str, ...],
    valid_for: dt.timedelta,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _ec_key()
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key(), valid_for)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def generate_tls(
    directory: str | os.PathLike[str],
    *,
    client_user: str = "root",
    hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    valid_for: dt.timedelta = dt.timedelta(days=2),
) -> TLSFiles:
    """Make a throwaway CA, a server and a client certificate as PEM files in ``directory``.

    ``hosts`` become the server certificate's subject alternative names (IP addresses
    as IP SANs, the rest as DNS SANs); ``client_user`` is the client certificate's CN.
    Keys are ECDSA P-256, written with mode 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    ca_key = _ec_key()
    ca_cert = (
        _builder("whizorch test CA", None, ca_key.public_key(), valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
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
        .sign(ca_key, hashes.SHA256())
    )
    server_cert, server_key = _leaf(
        ca_cert,
        ca_key,
        hosts[0] if hosts else "server",
        server=True,
        hosts=hosts,
        valid_for=valid_for,
    )
    client_cert, client_key = _leaf(
        ca_cert, ca_key, client_user, server=False, hosts=(), valid_for=valid_for
    )
    files = TLSFiles(
        directory=out,
        ca_cert=out / "ca.pem",
        ca_key=out / "ca-key.pem",
        server_cert=out / "server.pem",
        server_key=out / "server-key.pem",
        client_cert=out / f"client-{client_user}.pem",
        client_key=out / f"client-{client_user}-key.pem",
        client_user=client_user,
    )
    _write_cert(ca_cert, files.ca_cert)
    _write_key(ca_key, files.ca_key)
    _write_cert(server_cert, files.server_cert)
    _write_key(server_key, files.server_key)
    _write_cert(client_cert, files.client_cert)
    _write_key(client_key, files.client_key)
    return files


def make_client_cert(
    tls: TLSFiles,
    user: str,
    *,
    valid_for: dt.timedelta = dt.timedelta(days=2),
) -> tuple[Path, Path]:
    """Issue another client certificate (CN = ``user``) from ``tls``'s CA.

    Returns ``(cert_path, key_path)``, written next to the other files.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(tls.ca_key.read_bytes(), password=None)
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("the CA key is not an EC key made by generate_tls", path=str(tls.ca_key))
    cert, key = _leaf(ca_cert, ca_key, user, server=False, hosts=(), valid_for=valid_for)
    cert_path = tls.directory / f"client-{user}.pem"
    key_path = tls.directory / f"client-{user}-key.pem"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path
