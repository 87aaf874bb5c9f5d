"""What a partition's commit carries when its alert state does not fit (no Kafka needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from aiokafka import TopicPartition

from monitor import offsets
from monitor.config import Settings
from monitor.detector import Detector, DetectorConfig
from monitor.events import ModelRef
from monitor.records import Decoder, DecoderConfig
from monitor.service import Service, _Pipeline
from monitor.windows import WindowStore

FEATURES = ("a", "b")
TP = TopicPartition("readings", 0)


def _service(tmp_path: Path, limit: int) -> Service:
    settings = Settings.model_validate(
        {"model": {"path": str(tmp_path)}, "kafka": {"offset_metadata_max_bytes": limit}}
    )
    service = Service(settings)
    detector = Detector(
        DetectorConfig(k=1, n=1, m=5),
        threshold=1.0,
        features=FEATURES,
        model=ModelRef("m", "1", "0" * 64),
    )
    service._pipeline = _Pipeline(
        decoder=Decoder(DecoderConfig(features=FEATURES)),
        store=WindowStore(length=4, n_features=2, interval_ms=1000),
        detector=detector,
    )
    return service


def _open_alerts(service: Service, n_assets: int) -> None:
    assets = [f"pump-{i:05d}" for i in range(n_assets)]
    rng = np.random.default_rng(0)
    service.pipeline.detector.observe(
        assets,
        np.full(n_assets, 1_767_225_600_000, dtype=np.int64),
        (2.0 + rng.random(n_assets)).astype(np.float32),  # above the threshold: alerts open
        rng.random((n_assets, 2)).astype(np.float32),
    )
    service._partition_assets[TP] = set(assets)


def test_small_state_is_committed(tmp_path: Path) -> None:
    service = _service(tmp_path, limit=4096)
    _open_alerts(service, 3)
    state = offsets.decode(service._commit_metadata(TP, 41))
    assert state is not None
    assert state.scored_through == 41
    assert state.detector  # the open alerts travel with the commit


def test_oversized_state_commits_bare_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = _service(tmp_path, limit=256)
    _open_alerts(service, 2000)
    caplog.set_level(logging.WARNING, logger="monitor.service")
    texts = [service._commit_metadata(TP, through) for through in range(100, 150)]
    for through, text in zip(range(100, 150), texts, strict=True):
        assert len(text) <= 256
        state = offsets.decode(text)
        assert state is not None
        assert state.scored_through == through  # the offset part is never lost
        assert state.detector is None
    warnings = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # not once per batch
    assert "2000 assets" in warnings[0].getMessage()
