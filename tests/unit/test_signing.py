"""Bundle signatures: sign, verify, refuse; the CLI; hot reload with trusted keys."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry

from monitor.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    describe,
    load_bundle,
    sign_bundle,
    write_manifest,
)
from monitor.cli import main
from monitor.errors import BundleError, ConfigError
from monitor.metrics import Metrics
from monitor.model import ModelManager
from monitor.signing import (
    SIGNATURE_FILE,
    encrypted_pem,
    fingerprint,
    generate_key_pair,
    load_private_key,
    load_trusted_keys,
)


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny bundle: tests sign and tamper with it."""
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Two key pairs made with openssl, as a plant would: ``a``/``a.pub``, ``b``/``b.pub``."""
    out: dict[str, Path] = {}
    for name in ("a", "b"):
        private, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True
        )
        subprocess.run(
            ["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True
        )
        out[name], out[f"{name}.pub"] = private, public
    return out


def trusted(*paths: Path) -> tuple:
    return load_trusted_keys(list(paths))


def test_round_trip_and_exact_bytes(bundle: Path, keys: dict[str, Path]) -> None:
    key = load_private_key(keys["a"])
    sig = sign_bundle(bundle, key)
    assert sig == bundle / SIGNATURE_FILE
    doc = json.loads(sig.read_text())
    assert doc["algorithm"] == "ed25519"
    assert doc["key"] == fingerprint(key.public_key())
    loaded = load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))
    assert loaded.signed_by == fingerprint(key.public_key())
    # The signature is over manifest.json's exact bytes, checkable by OpenSSL alone.
    raw_sig = bundle.parent / "sig.bin"
    raw_sig.write_bytes(base64.b64decode(doc["signature"]))
    check = subprocess.run(
        [
            *("openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(keys["a.pub"])),
            *("-rawin", "-in", str(bundle / MANIFEST_FILE), "-sigfile", str(raw_sig)),
        ],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The fingerprint is the documented one: sha256 of the raw 32-byte public key.
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(keys["a.pub"]), "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    import hashlib

    assert loaded.signed_by == hashlib.sha256(der[-32:]).hexdigest()[:16]


def test_without_trusted_keys_nothing_changes(bundle: Path, keys: dict[str, Path]) -> None:
    assert load_bundle(bundle).signed_by is None  # unsigned: fine
    sign_bundle(bundle, load_private_key(keys["a"]))
    assert load_bundle(bundle).signed_by is None  # signed but not asked to verify
    assert "claims key" in describe(load_bundle(bundle))


def test_tampered_manifest_is_refused(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, load_private_key(keys["a"]))
    path = bundle / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc["threshold"]["value"] *= 10  # an attacker silencing alerts
    path.write_text(json.dumps(doc, indent=2))
    with pytest.raises(BundleError, match=r"does not match manifest\.json \(changed after") as e:
        load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))
    assert str(e.value).startswith(str(bundle))
    assert "\n" not in str(e.value)
    # Even one byte of whitespace counts: the signature covers the exact bytes.
    sign_bundle(bundle, load_private_key(keys["a"]))
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(BundleError, match="changed after signing"):
        load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))


def test_tampered_onnx_is_refused_by_its_hash(bundle: Path, keys: dict[str, Path]) -> None:
    sign_bundle(bundle, load_private_key(keys["a"]))
    onnx = bundle / MODEL_FILE
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 .* does not match the manifest"):
        load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))
    # ... and a tampered bundle cannot be signed either.
    with pytest.raises(BundleError, match="sha256"):
        sign_bundle(bundle, load_private_key(keys["a"]))


def test_unknown_key_and_unsigned_are_refused(bundle: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match=r"not signed \(no manifest\.sig\)"):
        load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))
    sign_bundle(bundle, load_private_key(keys["b"]))
    b_fp = load_trusted_keys([keys["b.pub"]])[0].fingerprint
    with pytest.raises(BundleError, match=f"signed by key {b_fp}, which is not a trusted key"):
        load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))


def test_rotation_accepts_either_trusted_key(bundle: Path, keys: dict[str, Path]) -> None:
    both = trusted(keys["a.pub"], keys["b.pub"])
    for name in ("a", "b"):
        key = load_private_key(keys[name])
        sign_bundle(bundle, key)
        assert load_bundle(bundle, trusted_keys=both).signed_by == fingerprint(key.public_key())


def test_malformed_signature_file(bundle: Path, keys: dict[str, Path]) -> None:
    sig = bundle / SIGNATURE_FILE
    for content in (b"not json", b'{"format": "other"}', b"\xff\xfe"):
        sig.write_bytes(content)
        with pytest.raises(BundleError, match="not a plantwatch signature file"):
            load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))
    sign_bundle(bundle, load_private_key(keys["a"]))
    doc = json.loads(sig.read_text())
    doc["signature"] = base64.b64encode(b"short").decode()
    sig.write_text(json.dumps(doc))
    with pytest.raises(BundleError, match="Ed25519 has 64"):
        load_bundle(bundle, trusted_keys=trusted(keys["a.pub"]))


def test_key_files_are_checked_in_one_line(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"model\.trusted_keys: .*missing\.pub: cannot read"):
        load_trusted_keys([tmp_path / "missing.pub"])
    with pytest.raises(ConfigError, match="is a private key; give its public key"):
        load_trusted_keys([keys["a"]])
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "rsa", "-out", str(rsa)], check=True)
    rsa_pub = tmp_path / "rsa.pub"
    subprocess.run(
        ["openssl", "pkey", "-in", str(rsa), "-pubout", "-out", str(rsa_pub)], check=True
    )
    with pytest.raises(ConfigError, match="not a PEM Ed25519 public key"):
        load_trusted_keys([rsa_pub])
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(rsa)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM key"):
        load_private_key(garbage)


def test_encrypted_private_key(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "enc.pem"
    path.write_bytes(encrypted_pem(key, b"pass-phrase-7"))
    with pytest.raises(ConfigError, match="encrypted; give its password") as e:
        load_private_key(path)
    assert "pass-phrase-7" not in str(e.value)
    with pytest.raises(ConfigError, match="wrong password"):
        load_private_key(path, b"nope")
    loaded = load_private_key(path, b"pass-phrase-7")
    raw = PublicFormat.Raw
    assert loaded.public_key().public_bytes(Encoding.Raw, raw) == key.public_key().public_bytes(
        Encoding.Raw, raw
    )


def test_generate_key_pair_never_overwrites(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    assert load_trusted_keys([public])[0].fingerprint == fingerprint(
        load_private_key(private).public_key()
    )
    with pytest.raises(ConfigError, match="exists; not overwriting"):
        generate_key_pair(tmp_path / "keys")


def test_cli_sign_and_inspect(
    bundle: Path, keys: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sign", "--generate-key", str(tmp_path / "k")]) == 0
    private, public = (
        tmp_path / "k" / "plantwatch-signing.pem",
        tmp_path / "k" / "plantwatch-signing.pub",
    )
    fp = load_trusted_keys([public])[0].fingerprint
    assert f"key     {fp}" in capsys.readouterr().out
    assert main(["sign", "--key", str(private), str(bundle)]) == 0
    assert f"(key {fp})" in capsys.readouterr().out
    assert main(["inspect", str(bundle), "--trusted-key", str(public)]) == 0
    assert f"signature   verified, trusted key {fp}" in capsys.readouterr().out
    # Not a trusted key: exit 2 with one line naming the bundle and the reason.
    assert main(["inspect", str(bundle), "--trusted-key", str(keys["a.pub"])]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"plantwatch inspect: error: {bundle}: signed by key {fp}, which is not a trusted key"
    )
    assert main(["sign", "--key", str(tmp_path / "nope.pem"), str(bundle)]) == 2
    assert "signing key" in capsys.readouterr().err
    assert main(["sign", "--key", str(private)]) == 2
    assert "give the bundle directory" in capsys.readouterr().err


def test_cli_sign_with_encrypted_key(bundle: Path, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "enc.pem").write_bytes(encrypted_pem(key, b"pw-123"))
    (tmp_path / "pw").write_text("pw-123\n")
    args = ["sign", "--key", str(tmp_path / "enc.pem"), str(bundle)]
    assert main([*args, "--key-password-file", str(tmp_path / "pw")]) == 0
    assert load_bundle(bundle).path == bundle
    assert json.loads((bundle / SIGNATURE_FILE).read_text())["key"] == fingerprint(key.public_key())


# --- hot reload -------------------------------------------------------------------------------


def _new_version(bundle: Path, version: str) -> None:
    """Rewrite the manifest as a new model version (same features and window: compatible)."""
    manifest = load_bundle(bundle).manifest
    model = manifest.model.model_copy(update={"version": version})
    threshold = manifest.threshold.model_copy(update={"value": manifest.threshold.value * 2})
    write_manifest(bundle, manifest.model_copy(update={"model": model, "threshold": threshold}))


async def test_hot_reload_refuses_unsigned_and_keeps_the_old_model(
    bundle: Path, keys: dict[str, Path]
) -> None:
    sign_bundle(bundle, load_private_key(keys["a"]))
    registry = CollectorRegistry()
    manager = ModelManager(
        bundle,
        device="cpu",
        threads=1,
        metrics=Metrics(registry, process=False),
        trusted_keys=[keys["a.pub"], keys["b.pub"]],
    )
    first = await manager.load()
    assert first.bundle.signed_by is not None
    old_version = first.bundle.manifest.model.version

    def reloads(result: str) -> float:
        value = registry.get_sample_value("plantwatch_model_reloads_total", {"result": result})
        return value or 0.0

    # A new version without a signature: refused, the old model keeps serving.
    (bundle / SIGNATURE_FILE).unlink()
    _new_version(bundle, "2")
    assert not await manager.reload()
    assert manager.current is first
    assert manager.current.bundle.manifest.model.version == old_version
    assert reloads("invalid") == 1
    # Signed later by the other (rotated-in) key: the signature file's arrival is a change.
    stamp = manager._stamp
    sign_bundle(bundle, load_private_key(keys["b"]))
    from monitor.model import _stamp

    assert _stamp(bundle) != stamp
    assert await manager.reload()
    assert manager.current.bundle.manifest.model.version == "2"
    assert reloads("ok") == 1
    # Tampered after signing: refused again.
    _new_version(bundle, "3")
    assert not await manager.reload()
    assert manager.current.bundle.manifest.model.version == "2"
    assert reloads("invalid") == 2


async def test_start_fails_on_an_unsigned_bundle(bundle: Path, keys: dict[str, Path]) -> None:
    manager = ModelManager(bundle, device="cpu", threads=1, trusted_keys=[keys["a.pub"]])
    with pytest.raises(BundleError, match="not signed"):
        await manager.load()
    manager = ModelManager(bundle, device="cpu", threads=1, trusted_keys=[bundle / "x.pub"])
    with pytest.raises(ConfigError, match=r"x\.pub: cannot read"):
        await manager.load()


def test_a_signature_made_by_openssl_verifies(
    bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    """An outside signer (OpenSSL, a token) can write manifest.sig itself, as documented."""
    raw = tmp_path / "sig.bin"
    subprocess.run(
        [
            *("openssl", "pkeyutl", "-sign", "-rawin", "-inkey", str(keys["a"])),
            *("-in", str(bundle / MANIFEST_FILE), "-out", str(raw)),
        ],
        check=True,
    )
    doc = {
        "format": "plantwatch-signature/1",
        "algorithm": "ed25519",
        "key": "made-by-openssl",
        "signature": base64.b64encode(raw.read_bytes()).decode(),
    }
    (bundle / SIGNATURE_FILE).write_text(json.dumps(doc))
    a = trusted(keys["a.pub"])
    assert load_bundle(bundle, trusted_keys=a).signed_by == a[0].fingerprint
    with pytest.raises(BundleError, match="signed by key made-by-openssl, which is not a trusted"):
        load_bundle(bundle, trusted_keys=trusted(keys["b.pub"]))


def test_train_signs_the_bundle_it_writes(
    tmp_path: Path, keys: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import sine_frame

    data = tmp_path / "normal.csv"
    sine_frame(3000).to_csv(data, index=False)
    out = tmp_path / "signed-bundle"
    train = ["train", "--data", str(data), "--out", str(out), "--model", "pca", "--window", "16"]
    train += ["--hyper", "n_components=2", "--no-progress"]
    # A bad key fails at once, before any training.
    assert main([*train, "--sign-key", str(tmp_path / "missing.pem")]) == 2
    assert "signing key" in capsys.readouterr().err
    assert not out.exists()
    assert main([*train, "--sign-key", str(keys["a"])]) == 0
    fp = load_trusted_keys([keys["a.pub"]])[0].fingerprint
    assert f"(key {fp})" in capsys.readouterr().out
    assert load_bundle(out, trusted_keys=trusted(keys["a.pub"])).signed_by == fp


def test_serve_refuses_an_unsigned_bundle_at_start_in_one_line(
    bundle: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    import sys

    config = tmp_path / "serve.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {
                    "path": str(bundle),
                    "device": "cpu",
                    "trusted_keys": [str(keys["a.pub"])],
                },
                "http": {"host": "127.0.0.1", "port": 0},
            }
        )
    )
    exe = Path(sys.executable).with_name("plantwatch")
    proc = subprocess.run(
        [exe, "serve", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"plantwatch serve: error: {bundle}: bundle is not signed (no manifest.sig), "
        "and with trusted keys configured a signature is required"
    )
    assert "Traceback" not in proc.stderr
