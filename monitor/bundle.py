"""The model bundle contract: an ONNX scoring graph plus ``manifest.json`` beside it.

The runtime owns this format; :mod:`training` produces bundles that satisfy it. A bundle is a
directory::

    bundle/
      manifest.json   # this module's :class:`Manifest`
      model.onnx      # input ``window`` float32 [batch, length, n_features] of *raw* readings;
                      # outputs ``score`` float32 [batch] and ``sensor_error`` [batch, n_features]
      manifest.sig    # optional: Ed25519 signature of manifest.json (:mod:`monitor.signing`)

The graph applies the scaler and computes the per-sensor reconstruction error itself, so the
service never re-derives preprocessing: it feeds raw windows in manifest feature order and
compares ``score`` with ``threshold.value``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from monitor.errors import BundleError
from monitor.signing import SIGNATURE_FILE, TrustedKey, read_signature, signature_document, verify
from monitor.signing import write_signature as _write_signature

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

#: The manifest schema this runtime reads. Bump on any incompatible change.
SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
INPUT_NAME = "window"
OUTPUT_SCORE = "score"
OUTPUT_SENSOR_ERROR = "sensor_error"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowSpec(_Frozen):
    length: int = Field(ge=2, description="Readings per window.")
    stride: int = Field(ge=1, description="Step between training windows, in readings.")


class ScalerSpec(_Frozen):
    kind: Literal["standard"] = "standard"
    mean: tuple[float, ...]
    scale: tuple[float, ...]


class ThresholdSpec(_Frozen):
    value: float = Field(gt=0, description="Window score at or above which a window is anomalous.")
    rule: str = Field(description="How the value was calibrated, e.g. 'quantile'.")
    params: dict[str, float] = Field(default_factory=dict)


class ScoreSummary(_Frozen):
    """Distribution of window scores on held-out normal validation windows."""

    n_windows: int
    mean: float
    std: float
    min: float
    max: float
    quantiles: dict[str, float]
    #: Share of validation windows at or above the threshold (the expected false-alarm rate).
    above_threshold: float


class ModelSpec(_Frozen):
    name: str
    version: str
    family: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class TrainingData(_Frozen):
    sha256: str
    rows: int
    start: str | None
    end: str | None
    files: tuple[str, ...]
    assets: tuple[str, ...] = ()


class OnnxSpec(_Frozen):
    file: str = MODEL_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    opset: int
    parity_max_abs_diff: float = Field(
        description="Max |torch - onnxruntime| on validation windows."
    )


class Manifest(_Frozen):
    """Everything the service needs to score with a bundle, and where the bundle came from."""

    schema_version: int
    model: ModelSpec
    features: tuple[str, ...] = Field(min_length=1)
    window: WindowSpec
    sampling_interval_s: float = Field(gt=0)
    scaler: ScalerSpec
    threshold: ThresholdSpec
    validation: ScoreSummary
    training_data: TrainingData
    onnx: OnnxSpec
    created: str
    versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = len(self.features)
        if len(set(self.features)) != n:
            raise ValueError("features contain duplicates")
        if len(self.scaler.mean) != n or len(self.scaler.scale) != n:
            raise ValueError(f"scaler has {len(self.scaler.mean)} entries for {n} features")
        if not all(math.isfinite(s) and s > 0 for s in self.scaler.scale):
            raise ValueError("scaler.scale must be finite and > 0")
        return self

    @property
    def n_features(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Bundle:
    """A bundle whose manifest parsed and whose ONNX file matches its recorded hash."""

    path: Path
    manifest: Manifest
    onnx_path: Path
    #: Fingerprint of the trusted key whose signature was verified; ``None`` when the load
    #: was not asked to verify one (no trusted keys).
    signed_by: str | None = None

    @property
    def sha256(self) -> str:
        return self.manifest.onnx.sha256


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(
    path: str | Path,
    *,
    expected_features: Sequence[str] | None = None,
    trusted_keys: Sequence[TrustedKey] = (),
) -> Bundle:
    """Read and verify a bundle directory.

    Raises :class:`BundleError` with a one-line reason if the manifest is missing or invalid, its
    schema version is not :data:`SCHEMA_VERSION`, the ONNX file's sha256 differs from the
    manifest's, or ``expected_features`` (the feature order the caller's data uses) differs.
    With ``trusted_keys``, the bundle must also carry a signature (``manifest.sig``) of the
    manifest's exact bytes by one of them; the bytes verified are the bytes parsed.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise BundleError(f"{root}: not a model bundle (no {MANIFEST_FILE})")
    try:
        data = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from None
    signed_by = verify(data, root, trusted_keys).fingerprint if trusted_keys else None
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: schema_version {version!r} is not supported "
            f"(this plantwatch reads {SCHEMA_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise BundleError(f"{manifest_path}: invalid {where}: {first['msg']}") from None

    onnx_path = root / manifest.onnx.file
    if onnx_path.parent != root or not onnx_path.is_file():
        raise BundleError(
            f"{root}: ONNX file {manifest.onnx.file!r} named by the manifest is missing"
        )
    actual = sha256_file(onnx_path)
    if actual != manifest.onnx.sha256:
        raise BundleError(
            f"{onnx_path}: sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.onnx.sha256[:12]}… (file changed or corrupted)"
        )
    if expected_features is not None:
        check_features(manifest, expected_features, where=str(root))
    return Bundle(path=root, manifest=manifest, onnx_path=onnx_path, signed_by=signed_by)


def sign_bundle(path: str | Path, key: Ed25519PrivateKey) -> Path:
    """Verify the bundle at ``path`` (schema, ONNX sha256) and write its ``manifest.sig``.

    The signature covers the manifest bytes that were verified: a manifest rewritten meanwhile
    is a :class:`BundleError`, never a signature of something unchecked.
    """
    root = Path(path)
    manifest_path = root / MANIFEST_FILE
    try:
        before = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{root}: not a model bundle ({MANIFEST_FILE}: {exc.strerror})") from None
    load_bundle(root)
    if manifest_path.read_bytes() != before:
        raise BundleError(f"{manifest_path}: changed while it was being signed; sign again")
    return _write_signature(root, signature_document(before, key))


def check_features(manifest: Manifest, features: Sequence[str], *, where: str) -> None:
    """Raise :class:`BundleError` unless ``features`` is exactly the manifest's feature order."""
    got = tuple(features)
    if got == manifest.features:
        return
    missing = [f for f in manifest.features if f not in got]
    extra = [f for f in got if f not in manifest.features]
    if missing or extra:
        detail = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(extra)}" if extra else "",
            )
            if part
        )
    else:
        detail = "same sensors in a different order"
    raise BundleError(f"{where}: feature list does not match the bundle ({detail})")


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` atomically (a reader never sees a half-written manifest)."""
    target = directory / MANIFEST_FILE
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def describe(bundle: Bundle) -> str:
    """A human-readable summary of a bundle, as printed by ``plantwatch inspect``."""
    m = bundle.manifest
    v = m.validation
    quantiles = ", ".join(f"q{k}={val:.4g}" for k, val in v.quantiles.items())
    params = ", ".join(f"{k}={val:g}" for k, val in m.threshold.params.items())
    hp = m.model.hyperparameters
    # Per-mode thresholds and the flatline and bias checks get lines of their own.
    hyper = ", ".join(
        f"{k}={val}" for k, val in hp.items() if not k.startswith(("mode", "flatline", "bias"))
    )
    scaler = "\n".join(
        f"    {name:<24} mean={mu:<12.5g} scale={sd:.5g}"
        for name, mu, sd in zip(m.features, m.scaler.mean, m.scaler.scale, strict=True)
    )
    data = m.training_data
    lines = [
        f"bundle      {bundle.path}",
        f"model       {m.model.name} {m.model.version} ({m.model.family})",
        f"            {hyper}",
        f"onnx        {m.onnx.file} sha256={m.onnx.sha256} opset={m.onnx.opset} "
        f"parity_max_abs_diff={m.onnx.parity_max_abs_diff:.2e}",
        f"window      length={m.window.length} stride={m.window.stride} "
        f"interval={m.sampling_interval_s:g}s",
        f"threshold   {m.threshold.value:.6g} (rule {m.threshold.rule}: {params})",
        *_modes_line(hp),
        *_flatline_line(hp, m.n_features * m.threshold.value),
        *_bias_line(hp),
        f"validation  {v.n_windows} windows: mean={v.mean:.4g} std={v.std:.4g} "
        f"max={v.max:.4g}; {quantiles}; above threshold {v.above_threshold:.2%}",
        f"data        {data.rows} rows, {data.start} .. {data.end}, sha256={data.sha256[:16]}…",
        f"            files: {', '.join(data.files)}",
        f"            assets: {', '.join(data.assets) or '(single series)'}",
        f"created     {m.created}",
        f"signature   {signature_line(bundle)}",
        f"versions    {', '.join(f'{k} {val}' for k, val in m.versions.items())}",
        f"features    {m.n_features}, in order (scaler applied inside the graph):",
        scaler,
    ]
    return "\n".join(lines)


def _modes_line(hyper: dict[str, Any]) -> list[str]:
    """``plantwatch train --modes``: each mode's score scale and validation windows."""
    if "mode_scale" not in hyper:
        return []
    scale = ", ".join(f"{v:.3g}" for v in hyper["mode_scale"])
    counts = ", ".join(str(n) for n in hyper["mode_validation_windows"])
    return [
        f"modes       {len(hyper['mode_scale'])}: score × {scale} (validation windows {counts})"
    ]


def _flatline_line(hyper: dict[str, Any], threshold_sum: float) -> list[str]:
    """The sensors whose exactly constant windows score as anomalous (training.flatline): at
    least ``flatline_penalty / (n_features × threshold)`` times the threshold (``threshold_sum``
    is the denominator)."""
    if "flatline_sensors" not in hyper:
        return []
    times = hyper["flatline_penalty"] / threshold_sum
    names = ", ".join(hyper["flatline_sensors"])
    return [
        f"flatline    a window of identical readings scores ≥ {times:.2g} × threshold for: {names}"
    ]


def _bias_line(hyper: dict[str, Any]) -> list[str]:
    """The per-sensor limits on a window's mean signed residual (training.bias), in
    standard deviations of the sensor: beyond its limit, a sensor puts the window's score above
    the threshold."""
    if "bias_limits" not in hyper:
        return []
    limits = ", ".join(f"{name}={v:.3g}" for name, v in hyper["bias_limits"].items())
    return [
        f"bias        mean residual beyond {hyper['bias_factor']:g} × the validation maximum "
        f"scores above threshold; limits (std): {limits}"
    ]


def signature_line(bundle: Bundle) -> str:
    """Whether the bundle is signed, and by which key (verified or only claimed)."""
    if bundle.signed_by is not None:
        return f"verified, trusted key {bundle.signed_by}"
    try:
        parsed = read_signature(bundle.path / SIGNATURE_FILE)
    except BundleError as exc:
        return f"unusable {SIGNATURE_FILE} ({exc})"
    if parsed is None:
        return f"none (no {SIGNATURE_FILE})"
    return f"{SIGNATURE_FILE} claims key {parsed.claimed_key} (not verified: no trusted key given)"
