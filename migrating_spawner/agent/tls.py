"""The agent's own TLS certificate, pinned by the hub at registration.

An agent on a cloud host makes an EC P-256 key and a self-signed certificate for its
address at first boot (both files root's, mode 0600; a restarted agent reuses them), serves
HTTPS with them and sends the certificate with its registration. The hub keeps the SHA-256
fingerprint of its DER with the host record and reaches that agent only over HTTPS that
presents exactly that certificate (`aiohttp.Fingerprint`): no certificate authority and no
host name are involved, the pin is the trust, as an SSH host key is.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")

#: a pinned certificate is never renewed by a CA: it lives as long as its host
VALID_DAYS = 3650


def write_private(path: Path, data: bytes) -> None:
    """Write `path` readable by its owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def make_certificate(address: str, name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new key and a self-signed certificate for `address`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(name)]
    try:
        alt_names.append(x509.IPAddress(ipaddress.ip_address(address)))
    except ValueError:
        alt_names.append(x509.DNSName(address))
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(cert_path: Path, key_path: Path, address: str, name: str) -> bytes:
    """The agent's certificate PEM: the one made at first boot, or a new one (key first)."""
    if cert_path.exists() and key_path.exists():
        return cert_path.read_bytes()
    cert_pem, key_pem = make_certificate(address, name)
    write_private(key_path, key_pem)
    write_private(cert_path, cert_pem)
    return cert_pem


def certificate_fingerprint(cert_pem: str | bytes) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (what the hub pins); ValueError if
    `cert_pem` is not one PEM certificate."""
    data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
    if data.count(b"-----BEGIN CERTIFICATE-----") != 1:
        raise ValueError("not one PEM certificate")
    cert = x509.load_pem_x509_certificate(data)  # ValueError when it is not one
    return cert.fingerprint(hashes.SHA256()).hex()


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """The agent's HTTPS context (TLS 1.2 at least)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context
