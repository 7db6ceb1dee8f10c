"""Certificates made in the tests: a CA, broker (server) and client certificates, CRLs.

Made with the ``cryptography`` package (a dev dependency); nothing is read from disk but what a
test writes. EC P-256 keys keep generation fast::

    ca = CertAuthority.create(tmp_path / "ca", "test CA")
    server = ca.issue("broker", dns=["localhost"], ips=["127.0.0.1"])
    client = ca.issue("client", client=True, password="hunter2")   # encrypted key
    expired = ca.issue("old", dns=["localhost"], days=-1)          # valid until yesterday
    crl = ca.revoke(server)                                        # a CRL naming it
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

x509 = pytest.importorskip("cryptography.x509", reason="pip install cryptography")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

__all__ = ["KEY_PASSWORD", "CertAuthority", "Issued", "Pki", "bcrypt_hash", "web_config_file"]


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files; ``serial`` for revocation."""

    cert: Path
    key: Path
    serial: int


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: str | None) -> None:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    )


class CertAuthority:
    """A self-signed CA that issues certificates into ``root``."""

    def __init__(
        self, root: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ):
        self.root = root
        self.name = name
        self.key = key
        self.cert = cert
        self.cert_path = root / "ca.pem"
        self._revoked: list[int] = []

    @classmethod
    def create(cls, root: Path, name: str = "streamrnn test CA") -> CertAuthority:
        root.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
                ),  # fmt: skip
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        ca = cls(root, name, key, cert)
        ca.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return ca

    def issue(
        self,
        name: str,
        *,
        dns: Sequence[str] = (),
        ips: Sequence[str] = (),
        client: bool = False,
        days: int = 30,
        password: str | None = None,
    ) -> Issued:
        """A leaf certificate for ``dns``/``ips`` (server) or a client certificate.

        ``days`` < 0 makes one that expired ``-days`` days ago.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        start = now - dt.timedelta(days=2) if days > 0 else now + dt.timedelta(days=days - 30)
        end = now + dt.timedelta(days=days)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        alt: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.root / f"{name}.pem", self.root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path, password)
        return Issued(cert_path, key_path, serial)

    def revoke(self, issued: Issued) -> Path:
        """Revoke ``issued``; returns the path of a fresh CRL naming every revoked serial."""
        self._revoked.append(issued.serial)
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=1))
            .next_update(now + dt.timedelta(days=7))
        )
        for serial in self._revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - dt.timedelta(minutes=1))
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        path = self.root / "crl.pem"
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path


KEY_PASSWORD = "client-key-pw"  # the password of Pki.client's key


@dataclass
class Pki:
    """The certificates of the Kafka security tests: a CA, another CA, broker certificates (one
    right, one for another name, one expired) and client certificates (one of each CA)."""

    ca: CertAuthority
    other: CertAuthority
    server: Issued
    wrong_name: Issued
    expired: Issued
    client: Issued  # key encrypted with KEY_PASSWORD
    stranger: Issued  # a client certificate from another CA

    @classmethod
    def create(cls, root: Path) -> Pki:
        ca, other = (
            CertAuthority.create(root / "ca"),
            CertAuthority.create(root / "other", "other CA"),
        )
        return cls(
            ca=ca,
            other=other,
            server=ca.issue("broker", dns=["localhost"], ips=["127.0.0.1"]),
            wrong_name=ca.issue("wrong-name", dns=["kafka.example.com"]),
            expired=ca.issue("expired", dns=["localhost"], ips=["127.0.0.1"], days=-1),
            client=ca.issue("client", client=True, password=KEY_PASSWORD),
            stranger=other.issue("stranger", client=True),
        )


def bcrypt_hash(password: str) -> str:
    """A bcrypt hash as ``htpasswd -nB`` writes it (``$2y$``), cheap to check (cost 4)."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")


def web_config_file(directory: Path, ca: CertAuthority, users: dict[str, str], **more: Any) -> Path:
    """A Prometheus web-config file: TLS with a certificate of ``ca`` for 127.0.0.1 and
    localhost, a header, and ``users`` ({name: password}) as bcrypt-hashed basic-auth users."""
    server = ca.issue("metrics", dns=["localhost"], ips=["127.0.0.1"])
    raw = {
        "tls_server_config": {"cert_file": str(server.cert), "key_file": str(server.key)},
        "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        "basic_auth_users": {user: bcrypt_hash(pw) for user, pw in users.items()},
        **more,
    }
    path = directory / "web.yml"
    path.write_text(yaml.safe_dump(raw))
    return path
