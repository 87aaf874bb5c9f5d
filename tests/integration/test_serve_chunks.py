"""``serve`` with batches split into chunks (tiny chunk size): nothing lost, nothing doubled."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from monitor import service as service_module
from tests.harness import (
    assert_alert_sequences,
    read_alerts,
    running,
    sample,
    settings_for,
    wait_for,
)
from tests.plant import PLANT
from training.simulator import PlantConfig, PlantSimulator, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NewTopic = Callable[..., Awaitable[str]]


async def test_chunked_batches_score_every_reading_once(
    kafka_bootstrap: str,
    new_topic: NewTopic,
    plant_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 64 readings per chunk: every getmany batch of a partition is appended and scored in
    # many chunks, some of them starting or ending inside a run of one asset's readings.
    monkeypatch.setattr(service_module, "CHUNK_BYTES", 1)
    monkeypatch.setattr(service_module, "MIN_CHUNK_READINGS", 64)
    sim = PlantSimulator(
        PlantConfig(**PLANT, start="2026-01-04T00:00:00Z", duration_s=3600, n_faults=2, seed=23)
    )
    readings = await new_topic(partitions=2)
    alerts = await new_topic(partitions=1)
    dlq = await new_topic(partitions=1)
    # Batch messages of 10 readings: chunks are cut between messages.
    produced = await produce(sim, kafka_bootstrap, readings, batch_size=10)
    settings = settings_for(
        kafka_bootstrap, plant_bundle, readings=readings, alerts=alerts, dead_letter=dlq
    )
    async with running(settings) as service:
        await wait_for(
            lambda: sample(service, "plantwatch_readings_total", {"result": "ok"}) >= produced,
            within=120,
            what=f"{produced} readings to be consumed",
        )
        ok = sample(service, "plantwatch_readings_total", {"result": "ok"})
        scored = sample(service, "plantwatch_windows_scored_total")
    assert ok == produced
    # Every reading after each asset's first full window was scored, once.
    assert scored == produced - 31 * len(sim.assets)
    events = await read_alerts(kafka_bootstrap, alerts)
    assert_alert_sequences(events)
