"""Service._expire_idle: silent assets leave the store, the partition's asset set and the
per-asset series; one with an open alert keeps its detector state (no Kafka needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from aiokafka import TopicPartition

from monitor.config import Settings
from monitor.service import Service
from monitor.windows import WindowStore
from tests.stand_ins import route

FEATURES = ("a", "b")
TP = TopicPartition("readings", 0)
I = 1000  # noqa: E741


def _service(tmp_path: Path) -> Service:
    settings = Settings.model_validate(
        {"model": {"path": str(tmp_path)}, "windows": {"idle_timeout_s": 30}}
    )
    service = Service(settings)
    store = WindowStore(length=4, n_features=2, interval_ms=I, idle_timeout_ms=30 * I)
    service._routes = [route(service.models, store=store)]
    return service


def _feed(service: Service, assets: list[str], steps: range) -> None:
    store = service.pipeline.store
    for step in steps:
        for asset in assets:
            store.append(
                asset,
                np.array([step * I], dtype=np.int64),
                np.zeros((1, 2), dtype=np.float32),
                np.array([step], dtype=np.int64),
                0,
            )
            service._partition_assets[TP].add(asset)
            service.metrics.set_asset_score(asset, 0.5)


def test_silent_assets_are_expired_but_open_alerts_stay(tmp_path: Path) -> None:
    service = _service(tmp_path)
    assert service._expiry_period_s == 30
    _feed(service, ["live-1", "live-2", "live-3", "gone", "alerting"], range(0, 10))
    service.pipeline.detector.observe(
        ["alerting"],
        np.array([9 * I], dtype=np.int64),
        np.array([5.0], dtype=np.float32),
        np.ones((1, 2), dtype=np.float32),
    )
    service._expire_idle()  # starts the clock
    _feed(service, ["live-1", "live-2", "live-3"], range(10, 60))
    service._expire_idle()

    assert len(service.pipeline.store) == 3
    assert service._partition_assets[TP] == {"live-1", "live-2", "live-3", "alerting"}
    assert service.pipeline.detector.open_alerts() == 1
    get = service.registry.get_sample_value
    assert get("plantwatch_data_quality_events_total", {"kind": "asset_expired"}) == 2
    assert get("plantwatch_anomaly_score", {"asset": "gone", "route": "default"}) is None
    assert get("plantwatch_anomaly_score", {"asset": "live-1", "route": "default"}) == 0.5


def test_no_expiry_without_idle_timeout(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {"model": {"path": str(tmp_path)}, "windows": {"idle_timeout_s": None}}
    )
    assert Service(settings)._expiry_period_s == float("inf")
