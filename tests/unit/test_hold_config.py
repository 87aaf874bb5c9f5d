"""``detector.hold`` in ``serve``'s config: checked against the bundle before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.errors import ConfigError
from monitor.service import Service
from tests.harness import settings_for


async def test_a_hold_sensor_the_bundle_lacks_is_refused_at_start(tiny_bundle: Path) -> None:
    settings = settings_for(
        "127.0.0.1:1",  # nothing listens: the check must come before any connection
        tiny_bundle,
        readings="r",
        alerts="a",
        dead_letter="d",
        detector={"hold": {"sensor": "speed", "running_above": 1.0}},
    )
    service = Service(settings, registry=CollectorRegistry())
    with pytest.raises(ConfigError, match=r"detector\.hold\.sensor: 'speed' is not a sensor"):
        await service.start()
    await service.stop()


def test_hold_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="running_above"):
        settings_for(
            "127.0.0.1:1",
            Path("b"),
            readings="r",
            alerts="a",
            dead_letter="d",
            detector={"hold": {"sensor": "a", "running_above": float("nan")}},
        )
