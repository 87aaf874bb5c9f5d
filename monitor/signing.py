"""Ed25519 signatures of model bundles (``plantwatch sign``, ``model.trusted_keys``).

A signature covers the exact bytes of ``manifest.json``. The manifest pins the ONNX file's
sha256, which every load checks, so a valid signature vouches for the whole scoring graph, the
threshold and the feature order; files not named by the manifest (the training report) are not
covered. The signature sits beside the manifest as ``manifest.sig``, a small JSON document::

    {"format": "plantwatch-signature/1", "algorithm": "ed25519",
     "key": "<fingerprint of the signing key>", "signature": "<base64 of the 64-byte signature>"}

``key`` is a hint for error messages only (it is not signed): verification tries every trusted
key. A key's fingerprint is the first 16 hex digits of the sha256 of its raw 32-byte public key
(``openssl pkey -pubin -in KEY.pub -outform DER | tail -c 32 | sha256sum``). Keys are standard
PEM files (``openssl genpkey -algorithm ed25519``); the signature checks with OpenSSL alone::

    python3 -c 'import json,sys,base64; sys.stdout.buffer.write(base64.b64decode(
        json.load(open("manifest.sig"))["signature"]))' > sig.bin
    openssl pkeyutl -verify -pubin -inkey KEY.pub -rawin -in manifest.json -sigfile sig.bin
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from monitor.errors import BundleError, ConfigError

SIGNATURE_FILE: Final = "manifest.sig"
SIGNATURE_FORMAT: Final = "plantwatch-signature/1"
ALGORITHM: Final = "ed25519"


def fingerprint(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw public key."""
    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


@dataclass(frozen=True)
class TrustedKey:
    """A public key from ``model.trusted_keys``."""

    path: Path
    key: Ed25519PublicKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)


def load_trusted_keys(
    paths: Sequence[Path], *, setting: str = "model.trusted_keys"
) -> tuple[TrustedKey, ...]:
    """Read PEM Ed25519 public keys; :class:`ConfigError` in one line naming a bad file."""
    keys = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{setting}: {path}: cannot read ({exc.strerror or exc})") from None
        if b"PRIVATE KEY" in data:
            raise ConfigError(
                f"{setting}: {path} is a private key; give its public key "
                "(openssl pkey -in KEY -pubout), the private key stays off this machine"
            )
        try:
            key = load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            key = None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{setting}: {path}: not a PEM Ed25519 public key")
        keys.append(TrustedKey(path, key))
    return tuple(keys)


def load_private_key(path: Path, password: bytes | None = None) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key for signing; :class:`ConfigError` in one line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"signing key {path}: cannot read ({exc.strerror or exc})") from None
    try:
        key = load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise ConfigError(
                f"signing key {path}: the key is encrypted; give its password "
                "with --key-password-file"
            ) from None
        key = load_pem_private_key(data, None)
    except (ValueError, UnsupportedAlgorithm):
        what = "cannot decrypt it (wrong password?)" if b"ENCRYPTED" in data else "not a PEM key"
        raise ConfigError(f"signing key {path}: {what}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"signing key {path}: not an Ed25519 key (openssl genpkey -algorithm ed25519)"
        )
    return key


def generate_key_pair(directory: Path, name: str = "plantwatch-signing") -> tuple[Path, Path]:
    """A new key pair in ``directory``: ``NAME.pem`` (private, mode 0600) and ``NAME.pub``.

    Refuses to overwrite existing files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.pem", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def encrypted_pem(key: Ed25519PrivateKey, password: bytes) -> bytes:
    """``key`` as a password-protected PKCS#8 PEM (for tests and key handling scripts)."""
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password))


def signature_document(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """The ``manifest.sig`` content signing ``data`` with ``key``."""
    doc = {
        "format": SIGNATURE_FORMAT,
        "algorithm": ALGORITHM,
        "key": fingerprint(key.public_key()),
        "signature": base64.b64encode(key.sign(data)).decode("ascii"),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_signature(directory: Path, document: bytes) -> Path:
    """Write ``manifest.sig`` atomically."""
    target = directory / SIGNATURE_FILE
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest.", suffix=".sig")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(document)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class SignatureFile:
    """A parsed ``manifest.sig``: the signature and the (unsigned) fingerprint it claims."""

    claimed_key: str
    signature: bytes


def read_signature(path: Path) -> SignatureFile | None:
    """``None`` if there is no signature file; :class:`BundleError` if it is malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != SIGNATURE_FORMAT:
            raise ValueError("format")
        if doc.get("algorithm") != ALGORITHM:
            raise ValueError("algorithm")
        signature = base64.b64decode(str(doc["signature"]), validate=True)
        claimed = str(doc.get("key", "?"))
    except (ValueError, KeyError, binascii.Error, UnicodeDecodeError):
        raise BundleError(
            f"{path}: not a plantwatch signature file ({SIGNATURE_FORMAT}, {ALGORITHM})"
        ) from None
    if len(signature) != 64:
        raise BundleError(f"{path}: the signature has {len(signature)} bytes, Ed25519 has 64")
    return SignatureFile(claimed, signature)


def verify(data: bytes, directory: Path, keys: Sequence[TrustedKey]) -> TrustedKey:
    """The trusted key whose signature in ``directory/manifest.sig`` covers ``data``.

    Raises :class:`BundleError` in one line: the bundle is unsigned, signed by a key that is not
    trusted, or its manifest changed after it was signed.
    """
    sig_path = directory / SIGNATURE_FILE
    parsed = read_signature(sig_path)
    if parsed is None:
        raise BundleError(
            f"{directory}: bundle is not signed (no {SIGNATURE_FILE}), and with trusted keys "
            "configured a signature is required"
        )
    for trusted in keys:
        try:
            trusted.key.verify(parsed.signature, data)
        except InvalidSignature:
            continue
        return trusted
    if parsed.claimed_key in {k.fingerprint for k in keys}:
        raise BundleError(
            f"{directory}: signature by trusted key {parsed.claimed_key} does not match "
            "manifest.json (changed after signing)"
        )
    raise BundleError(
        f"{directory}: signed by key {parsed.claimed_key}, which is not a trusted key"
    )
