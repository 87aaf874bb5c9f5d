"""Throwaway TLS material for tests, made with the ``openssl`` command line.

One place for every test that needs certificates: an untrusted CA for the Kafka TLS tests, and a
CA with server and client certificates for the webhook mutual-TLS tests. Nothing here is a
secret; all of it lives in the test's ``tmp_path`` and is valid for a day.
"""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd)


def self_signed_ca(directory: Path, name: str = "test-ca") -> tuple[Path, Path]:
    """A self-signed CA certificate and its unencrypted key: ``(NAME.pem, NAME.key)``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
        *("-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)),
        cwd=directory,
    )
    return cert, key


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def issue(
    directory: Path,
    ca: tuple[Path, Path],
    name: str,
    *,
    server: bool = False,
    key_password: str | None = None,
) -> Issued:
    """A certificate for ``name`` signed by ``ca``; a server one has SAN ``IP:127.0.0.1``.

    With ``key_password`` the private key is written encrypted (AES-256) with that password.
    """
    ca_cert, ca_key = ca
    key, csr, cert = (directory / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
    _openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
        *("-keyout", str(key), "-out", str(csr)),
        cwd=directory,
    )
    ext = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    lines = [f"extendedKeyUsage={usage}"]
    if server:
        lines.append("subjectAltName=IP:127.0.0.1,DNS:localhost")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key)),
        *("-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)),
        cwd=directory,
    )
    if key_password is not None:
        encrypted = directory / f"{name}.enc.key"
        _openssl(
            *("pkey", "-in", str(key), "-aes256", "-out", str(encrypted)),
            *("-passout", f"pass:{key_password}"),
            cwd=directory,
        )
        key = encrypted
    return Issued(cert=cert, key=key)


@dataclass(frozen=True)
class WebhookPki:
    """A receiver's private CA and everything the mutual-TLS webhook tests use."""

    ca: Path
    server: Issued
    client: Issued
    #: A second client certificate whose key is encrypted with ``key_password``.
    client_encrypted: Issued
    key_password: str
    #: A client certificate from another CA, which the receiver does not trust.
    stranger: Issued
    #: Another client of the right CA (its key does not match ``client``'s certificate).
    other: Issued


def webhook_pki(directory: Path, key_password: str) -> WebhookPki:
    ca = self_signed_ca(directory, "hooks-ca")
    rogue = self_signed_ca(directory, "rogue-ca")
    return WebhookPki(
        ca=ca[0],
        server=issue(directory, ca, "receiver", server=True),
        client=issue(directory, ca, "plantwatch"),
        client_encrypted=issue(directory, ca, "client-enc", key_password=key_password),
        key_password=key_password,
        stranger=issue(directory, rogue, "stranger"),
        other=issue(directory, ca, "other"),
    )


def server_context(pki: WebhookPki) -> ssl.SSLContext:
    """The receiver's side: its certificate, and client certificates required from its CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(pki.server.cert, pki.server.key)
    return context
