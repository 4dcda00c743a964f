"""Throwaway PKI for TLS tests: a CA, and certificates it signs, as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert_file: Path
    key_file: Path

    @property
    def cert(self) -> bytes:
        return self.cert_file.read_bytes()

    @property
    def key(self) -> bytes:
        return self.key_file.read_bytes()


class Authority:
    """A self-signed CA that writes itself and what it issues under `directory`."""

    def __init__(self, directory: Path, name: str) -> None:
        self._directory = directory
        self._name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(f"{name} test CA")
        self._subject = subject
        builder = _builder(subject, subject, self._key.public_key())
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        certificate = builder.sign(self._key, hashes.SHA256())
        self.cert_file = directory / f"{name}-ca.pem"
        self.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    @property
    def cert(self) -> bytes:
        return self.cert_file.read_bytes()

    def server(self, host: str = "127.0.0.1") -> Issued:
        names = [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
        return self._issue(
            "server", x509.SubjectAlternativeName(names), ExtendedKeyUsageOID.SERVER_AUTH
        )

    def client(self, name: str = "client") -> Issued:
        names = x509.SubjectAlternativeName([x509.DNSName(name)])
        return self._issue(name, names, ExtendedKeyUsageOID.CLIENT_AUTH)

    def _issue(
        self, name: str, names: x509.SubjectAlternativeName, usage: x509.ObjectIdentifier
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _builder(_name(name), self._subject, key.public_key())
        builder = builder.add_extension(names, False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        certificate = builder.sign(self._key, hashes.SHA256())
        issued = Issued(
            self._directory / f"{self._name}-{name}.pem",
            self._directory / f"{self._name}-{name}-key.pem",
        )
        issued.cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return issued


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
