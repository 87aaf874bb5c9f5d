from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from monitor.bundle import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    check_features,
    describe,
    load_bundle,
    write_manifest,
)
from monitor.errors import BundleError
from monitor.scoring import (
    CPU,
    CUDA,
    Scorer,
    cgroup_cpu_quota,
    choose_providers,
    cpu_cores,
    scoring_plan,
)


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def _edit_manifest(bundle: Path, **changes: object) -> None:
    path = bundle / MANIFEST_FILE
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def test_manifest_round_trip(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = load_bundle(tiny_bundle).manifest
    write_manifest(tmp_path, manifest)
    again = Manifest.model_validate_json((tmp_path / MANIFEST_FILE).read_text())
    assert again == manifest
    assert manifest.features == ("a", "b", "c")
    assert manifest.window.length == 16
    assert manifest.training_data.rows == 3000
    assert len(manifest.training_data.sha256) == 64
    assert {"torch", "onnxruntime", "plantwatch"} <= set(manifest.versions)
    assert manifest.validation.quantiles["0.99"] * 1.5 == pytest.approx(manifest.threshold.value)


def test_loader_refuses_tampered_onnx(bundle_copy: Path) -> None:
    onnx = bundle_copy / MODEL_FILE
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 .* does not match the manifest") as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_loader_refuses_mismatched_feature_list(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"missing c; unexpected d"):
        load_bundle(tiny_bundle, expected_features=["a", "b", "d"])
    with pytest.raises(BundleError, match="different order"):
        load_bundle(tiny_bundle, expected_features=["b", "a", "c"])
    assert load_bundle(tiny_bundle, expected_features=["a", "b", "c"]).manifest.n_features == 3


def test_loader_refuses_other_schema_version(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, schema_version=99)
    with pytest.raises(BundleError, match="schema_version 99 is not supported"):
        load_bundle(bundle_copy)


def test_loader_names_the_invalid_field(bundle_copy: Path) -> None:
    _edit_manifest(bundle_copy, features=["a", "a", "c"])
    with pytest.raises(BundleError, match="duplicates"):
        load_bundle(bundle_copy)
    _edit_manifest(bundle_copy, features=["a", "b", "c"], window={"length": 1, "stride": 1})
    with pytest.raises(BundleError, match=r"invalid window\.length"):
        load_bundle(bundle_copy)


def test_loader_refuses_missing_pieces(bundle_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path / "nothing")
    (bundle_copy / MODEL_FILE).unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleError, match="unreadable manifest"):
        load_bundle(bundle_copy)


def test_check_features_accepts_exact_order(tiny_bundle: Path) -> None:
    check_features(load_bundle(tiny_bundle).manifest, ("a", "b", "c"), where="x")


def test_scorer_scores_batches_of_any_size(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    scorer = Scorer(bundle, device="cpu")
    assert scorer.provider == CPU
    rng = np.random.default_rng(0)
    for batch in (1, 7, 300):
        windows = rng.standard_normal((batch, 16, 3)).astype(np.float32)
        out = scorer.score(windows)
        assert out.score.shape == (batch,)
        assert out.sensor_error.shape == (batch, 3)
        np.testing.assert_allclose(out.sensor_error.mean(axis=1), out.score, rtol=1e-5)
    with pytest.raises(ValueError, match="expected"):
        scorer.score(np.zeros((2, 15, 3), dtype=np.float32))


def test_provider_choice_falls_back_to_cpu(caplog: pytest.LogCaptureFixture) -> None:
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cuda", [CPU]) == [CPU]
    assert "scoring on CPU" in caplog.text


@pytest.mark.parametrize(
    ("device", "workers", "threads", "cores", "plan"),
    [
        # CPU, all automatic: one single-threaded run per core.
        ("cpu", 0, 0, 2, (2, 1)),
        ("auto", 0, 0, 8, (8, 1)),
        # One of the two given: the cores shared out by it.
        ("cpu", 0, 2, 8, (4, 2)),
        ("cpu", 0, 16, 8, (1, 16)),
        ("cpu", 2, 0, 8, (2, 4)),
        ("cpu", 3, 0, 2, (3, 1)),
        # A single worker keeps ONNX Runtime's own default (all cores).
        ("cpu", 1, 0, 8, (1, 0)),
        # Both given: as given.
        ("cpu", 2, 3, 8, (2, 3)),
    ],
)
def test_scoring_plan_on_cpu(
    device: str, workers: int, threads: int, cores: int, plan: tuple[int, int]
) -> None:
    assert scoring_plan(device, workers, threads, [CPU], cores) == plan  # type: ignore[arg-type]
    # CUDA asked for but not there: the same as CPU.
    if device == "auto":
        assert scoring_plan("cuda", workers, threads, [CPU], cores) == plan


def test_scoring_plan_with_cuda_scores_one_batch_at_a_time() -> None:
    assert scoring_plan("auto", 0, 0, [CUDA, CPU], 16) == (1, 0)
    assert scoring_plan("cuda", 2, 1, [CUDA, CPU], 16) == (2, 1)
    assert scoring_plan("cpu", 0, 0, [CUDA, CPU], 16) == (16, 1)


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000\n"}, 2.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu.max": "garbage 0\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_cpu_cores_are_capped_by_the_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_cores(tmp_path) == min(2, cpu_cores(tmp_path / "none"))
    (tmp_path / "cpu.max").write_text("10000 100000\n")
    assert cpu_cores(tmp_path) == 1


def test_scorer_batch_limit_on_cpu(tiny_bundle: Path) -> None:
    from monitor.scoring import CPU_BATCH

    assert Scorer(load_bundle(tiny_bundle), device="cpu").max_batch == CPU_BATCH


def test_describe_mentions_the_essentials(tiny_bundle: Path) -> None:
    text = describe(load_bundle(tiny_bundle))
    for needle in ("tiny", "threshold", "sha256=", "length=16", "quantile", "a ", "b ", "c "):
        assert needle in text


def test_bucket_sizes() -> None:
    from monitor.scoring import BUCKETS, bucket_size

    assert [bucket_size(n) for n in (1, 32, 33, 512, 513, 8192)] == [32, 32, 128, 512, 2048, 8192]
    with pytest.raises(ValueError, match="largest bucket"):
        bucket_size(BUCKETS[-1] + 1)


def test_io_binding_path_matches_plain_run(tiny_bundle: Path) -> None:
    """The bucketed IOBinding path (CUDA's) gives the same scores; exercised here on the CPU."""
    bundle = load_bundle(tiny_bundle)
    plain = Scorer(bundle, device="cpu", io_binding=False)
    bound = Scorer(bundle, device="cpu", io_binding=True)
    assert bound.io_binding
    assert not plain.io_binding
    rng = np.random.default_rng(4)
    for batch in (1, 33, 300, 8192 + 5):
        windows = rng.standard_normal((batch, 16, 3)).astype(np.float32) + 5
        a, b = plain.score(windows), bound.score(windows)
        assert b.score.shape == (batch,)
        np.testing.assert_allclose(b.score, a.score, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b.sensor_error, a.sensor_error, rtol=1e-5, atol=1e-7)
