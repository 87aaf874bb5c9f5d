"""The consume loop overlaps a batch's processing with the previous batch's transaction.

Against fake Kafka clients (in memory; the real broker's behaviour is covered by the
integration tests): the next batch is scored while the previous one commits, transactions never
overlap, counters move only for committed batches, and a failed transaction rewinds both the
failed batch and the one processed behind it, so every reading is counted exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import OffsetAndMetadata

from monitor.config import Settings
from monitor.service import Service

TP = TopicPartition("readings", 0)
ROUND_TRIP_S = 0.02


class Broker:
    """One partition of JSON readings, the group's committed offsets and a log of events."""

    def __init__(self, features: tuple[str, ...], assets: int, steps: int) -> None:
        self.records: list[ConsumerRecord[bytes, bytes]] = []
        rng = np.random.default_rng(0)
        for step in range(steps):
            for a in range(assets):
                doc = {
                    "asset": f"pump-{a}",
                    "ts": 1_767_225_600_000 + step * 1000,
                    "values": dict(
                        zip(features, rng.normal(size=len(features)).tolist(), strict=True)
                    ),
                }
                offset = len(self.records)
                self.records.append(
                    ConsumerRecord(
                        "readings", 0, offset, 0, 0, f"pump-{a}".encode(), json.dumps(doc).encode(),
                        None, 0, 0, (),
                    )
                )  # fmt: skip
        self.committed: dict[TopicPartition, OffsetAndMetadata] = {}
        self.transactions = 0
        self.fail: set[int] = set()  # transaction numbers that fail
        self.events: list[str] = []
        self.open_transactions = 0


class FakeProducer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._offsets: dict[TopicPartition, OffsetAndMetadata] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        b = self.broker
        b.transactions += 1
        n = b.transactions
        b.open_transactions += 1
        assert b.open_transactions == 1, "two transactions at once"
        b.events.append(f"begin {n}")
        try:
            yield
            await asyncio.sleep(ROUND_TRIP_S)  # EndTxn and friends
            if n in b.fail:
                b.events.append(f"fail {n}")
                raise KafkaTimeoutError()
            b.committed.update(self._offsets)
            b.events.append(f"commit {n} at {self._offsets[TP].offset}")
        finally:
            b.open_transactions -= 1

    async def send(self, topic: str, value: bytes, **kw: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def send_offsets_to_transaction(self, commits: dict, group_id: str) -> None:
        self._offsets = {tp: OffsetAndMetadata(o, md) for tp, (o, md) in commits.items()}


class FakeConsumer:
    def __init__(self, broker: Broker, per_batch: int) -> None:
        self.broker = broker
        self.per_batch = per_batch
        self.position = 0

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict:
        records = self.broker.records[self.position : self.position + self.per_batch]
        if not records:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        self.position += len(records)
        self.broker.events.append(f"fetch {records[-1].offset}")
        return {TP: records}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.broker.events.append(f"seek {offset}")
        self.position = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seek(tp, 0)

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.broker.records)


class FakeAdmin:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def list_consumer_group_offsets(self, group: str, partitions: list) -> dict:
        return {tp: self.broker.committed[tp] for tp in partitions if tp in self.broker.committed}


def _index(events: list[str]) -> Any:
    """Position of the first event starting with a prefix."""
    return lambda prefix: next(i for i, e in enumerate(events) if e.startswith(prefix))


async def _run(
    tiny_bundle: Path, *, fail: set[int], assets: int = 5, steps: int = 40
) -> tuple[Service, Broker]:
    settings = Settings.model_validate(
        {"model": {"path": str(tiny_bundle)}, "input": {"fetch_timeout_ms": 5}}
    )
    service = Service(settings)
    model = await service.models.load()
    service._build_pipeline(model)
    broker = Broker(model.bundle.manifest.features, assets, steps)
    broker.fail = fail
    service._consumer = FakeConsumer(broker, per_batch=23)  # type: ignore[assignment]
    service._producer = FakeProducer(broker)  # type: ignore[assignment]
    service._admin = FakeAdmin(broker)  # type: ignore[assignment]
    service._new_producer = lambda: FakeProducer(broker)  # type: ignore[assignment,method-assign]
    service._started = True

    # Note when processing starts, to see it overlap the transaction in flight.
    process = service._process

    async def traced(batch: Any) -> Any:
        broker.events.append(f"process {max(r.offset for r in batch[TP])}")
        return await process(batch)

    service._process = traced  # type: ignore[method-assign]

    task = asyncio.create_task(service.run())
    total = len(broker.records)
    async with asyncio.timeout(30):
        # Readings count once committed (replayed ones are not counted again).
        while (
            service.registry.get_sample_value("plantwatch_readings_total", {"result": "ok"}) or 0
        ) < total:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    service.request_stop()
    await task
    return service, broker


async def test_the_next_batch_is_processed_while_the_previous_one_commits(
    tiny_bundle: Path,
) -> None:
    service, broker = await _run(tiny_bundle, fail=set())
    at = _index(broker.events)
    # Batch 2 (records up to offset 45) was processed after transaction 1 began and before it
    # committed; transaction 2 began only after transaction 1 committed.
    assert at("begin 1") < at("process 45") < at("commit 1 ") < at("begin 2")
    get = service.registry.get_sample_value
    assert get("plantwatch_messages_total", {"topic": "readings"}) == 200
    assert get("plantwatch_readings_total", {"result": "ok"}) == 200
    # Every reading after each asset's first full window scored once (window 16, 5 assets).
    assert get("plantwatch_windows_scored_total") == 200 - 15 * 5
    assert broker.committed[TP].offset <= 200
    assert get("plantwatch_batch_rewinds_total") == 0


@pytest.mark.parametrize("failing", [1, 3])
async def test_a_failed_transaction_rewinds_it_and_the_batch_behind_it(
    tiny_bundle: Path, failing: int
) -> None:
    service, broker = await _run(tiny_bundle, fail={failing})
    ev = broker.events
    at = _index(ev)
    # The batch behind the failed one had been processed, but is not committed: after the
    # rewind both are consumed again from the last commit.
    failed = at(f"fail {failing}")
    assert any(e.startswith("process") for e in ev[at(f"begin {failing}") : failed])
    last_commit = 0 if failing == 1 else int(ev[at(f"commit {failing - 1} ")].split()[-1])
    rewound_to = next(e for e in ev[failed:] if e.startswith("seek"))
    assert rewound_to == f"seek {last_commit}"
    get = service.registry.get_sample_value
    assert get("plantwatch_batch_rewinds_total") == 1
    # Counted exactly once, although some batches were processed twice (messages_total counts
    # what was consumed, the replay of window history after the rewind included).
    assert get("plantwatch_readings_total", {"result": "ok"}) == 200
    assert get("plantwatch_messages_total", {"topic": "readings"}) >= 200
    assert get("plantwatch_windows_scored_total") == 200 - 15 * 5
