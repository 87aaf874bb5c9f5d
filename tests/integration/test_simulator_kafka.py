"""The simulator's Kafka producer against the real broker: counts, keys, JSON shape, pacing."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from monitor.errors import KafkaUnavailableError
from training.simulator import SENSORS, PlantConfig, PlantSimulator, produce

pytestmark = pytest.mark.kafka

NewTopicFactory = Callable[..., Awaitable[str]]
CONSUME_TIMEOUT_S = 30.0


async def consume_all(bootstrap: str, topic: str, messages: int) -> list[tuple[bytes, Any]]:
    """Read ``messages`` messages from the start of ``topic`` as (key, decoded JSON)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes, Any]] = []
    try:
        async with asyncio.timeout(CONSUME_TIMEOUT_S):
            while len(out) < messages:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    out.extend((r.key or b"", json.loads(r.value or b"")) for r in batch)
        assert not await consumer.getmany(timeout_ms=500), "more messages than expected"
    finally:
        await consumer.stop()
    return out


def small_plant() -> PlantSimulator:
    # 3 assets x 400 steps, with a fault so labels are known up front.
    config = PlantConfig(
        n_pumps=2, n_compressors=1, duration_s=400, n_faults=1, fault_duration_s=(20, 60)
    )
    return PlantSimulator(config)


def check_reading(reading: dict[str, Any], key: bytes, start_ms: int) -> None:
    assert set(reading) == {"asset", "ts", "values"}
    assert reading["asset"].encode() == key
    assert isinstance(reading["ts"], int)
    assert reading["ts"] >= start_ms
    assert list(reading["values"]) == list(SENSORS)
    assert all(isinstance(v, float | int) for v in reading["values"].values())


async def test_single_readings_round_trip(kafka_bootstrap: str, new_topic: NewTopicFactory) -> None:
    sim = small_plant()
    topic = await new_topic(partitions=3)
    produced = await produce(sim, kafka_bootstrap, topic)
    assert produced == sim.rows == 1200
    got = await consume_all(kafka_bootstrap, topic, produced)
    assert Counter(k for k, _ in got) == {a.encode(): 400 for a in sim.assets}
    for key, reading in got:
        check_reading(reading, key, sim.config.start_ms)
    # Per key (one partition each), readings arrive in time order and match the file output.
    expected = next(iter(sim.chunks(400)))
    for asset in sim.assets:
        mine = [r for k, r in got if k == asset.encode()]
        assert [r["ts"] for r in mine] == sorted(r["ts"] for r in mine)
        rows = expected[expected["asset"] == asset]
        assert [r["values"]["flow"] for r in mine] == rows["flow"].tolist()
    assert len(sim.faults) == 1
    assert sim.faults[0].asset in sim.assets


async def test_batches_per_asset(kafka_bootstrap: str, new_topic: NewTopicFactory) -> None:
    sim = small_plant()
    topic = await new_topic(partitions=1)
    produced = await produce(sim, kafka_bootstrap, topic, batch_size=64)
    assert produced == 1200
    # 400 = 6 x 64 + 16: six full batches and one partial per asset.
    got = await consume_all(kafka_bootstrap, topic, 3 * 7)
    sizes = Counter((k, len(batch)) for k, batch in got)
    for asset in sim.assets:
        assert sizes[(asset.encode(), 64)] == 6
        assert sizes[(asset.encode(), 16)] == 1
    for key, batch in got:
        assert isinstance(batch, list)
        for reading in batch:
            check_reading(reading, key, sim.config.start_ms)
    assert sum(len(b) for _, b in got) == produced


async def test_rate_paces_readings(kafka_bootstrap: str, new_topic: NewTopicFactory) -> None:
    sim = small_plant()  # 1200 readings
    topic = await new_topic(partitions=1)
    started = time.monotonic()
    assert await produce(sim, kafka_bootstrap, topic, rate=1500) == 1200
    elapsed = time.monotonic() - started
    # 1200 readings at 1500/s with a 0.1 s burst allowance: at least ~0.7 s.
    assert elapsed >= 0.65


async def test_unreachable_broker_is_one_clear_error() -> None:
    with pytest.raises(KafkaUnavailableError, match=r"127\.0\.0\.1:1"):
        await produce(small_plant(), "127.0.0.1:1", "nowhere")
