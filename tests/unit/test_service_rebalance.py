"""The consume loop and a rebalance that runs while it waits (no Kafka needed: the consumer,
producer and admin client are stand-ins that record what the service asks of them).

aiokafka runs the rebalance callbacks in its coordinator task. A ``getmany`` can return records
fetched under the old assignment after the revocation has forgotten their partitions' windows,
and aiokafka reports the old assignment until the new one is made. Handled then, such a batch
started fresh windows and committed its offsets, so the next owner resumed after it and the
windows ending there were never scored.

A revocation commits what is open; the partitions are handed over only once that commit shows
in the group's offsets (a Kafka 2.3 broker answers OffsetFetch without a transaction whose
marker is still pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from monitor import service as service_module
from monitor.config import Settings
from monitor.service import Service, _Rebalance
from tests.stand_ins import GroupOffsets, json_record, route

FEATURES = ("a", "b")
TP = TopicPartition("readings", 0)
T0 = 1_767_225_600_000


def _record(offset: int, asset: str, step: int) -> ConsumerRecord[bytes, bytes]:
    return json_record(TP, offset, asset, T0 + step * 1000, [1.0, 2.0])


class _Consumer:
    """Answers ``getmany`` once with ``records``, running ``during`` (the rebalance) first."""

    def __init__(self, service: Service, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.service = service
        self.records = records
        self.during: Callable[[], Any] | None = None

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.during is not None:
            await self.during()
        self.service.request_stop()  # one pass of the loop
        return {TP: self.records}

    def assignment(self) -> set[TopicPartition]:
        return {TP}  # as aiokafka's, unchanged until the new assignment is made

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class _Producer:
    def __init__(self) -> None:
        self.transactions = 0
        self.offsets: list[dict[TopicPartition, tuple[int, str]]] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield
        self.transactions += 1

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, tuple[int, str]], group_id: str
    ) -> None:
        self.offsets.append(offsets)


def _service(tmp_path: Path) -> tuple[Service, _Consumer, _Producer]:
    service = Service(Settings.model_validate({"model": {"path": str(tmp_path)}}))
    service._routes = [route(service.models)]
    records = [_record(100 + i, f"pump-{i}", 50) for i in range(3)]
    consumer = _Consumer(service, records)
    producer = _Producer()
    service._consumer = consumer  # type: ignore[assignment]
    service._producer = producer  # type: ignore[assignment]
    service._admin = GroupOffsets(producer)  # type: ignore[assignment]
    service._started = True
    return service, consumer, producer


async def test_a_batch_is_handled_and_committed_without_a_rebalance(tmp_path: Path) -> None:
    # The stand-ins are enough to run the loop: the same batch, no rebalance, is committed.
    service, _, producer = _service(tmp_path)
    await service.run()
    assert len(service.pipeline.store) == 3
    assert producer.offsets == [{TP: (100, producer.offsets[0][TP][1])}]


async def test_a_batch_fetched_before_a_revocation_is_dropped(tmp_path: Path) -> None:
    service, consumer, producer = _service(tmp_path)
    listener = _Rebalance(service)

    async def revoke() -> None:
        await listener.on_partitions_revoked([TP])

    consumer.during = revoke
    await service.run()

    # Nothing of the stale batch reached the windows or a commit: whoever owns the partition
    # next reads it again from the last commit.
    assert len(service.pipeline.store) == 0
    assert service._open is None
    assert producer.transactions == 0
    assert producer.offsets == []


@pytest.mark.parametrize("revoked_first", [False, True], ids=["first-assignment", "reassigned"])
async def test_a_batch_fetched_after_an_assignment_is_handled(
    tmp_path: Path, revoked_first: bool
) -> None:
    # One getmany can span a whole rebalance; what it returns then was fetched from the new
    # assignment's positions, and dropping it would lose it (the positions moved past it).
    service, consumer, producer = _service(tmp_path)
    listener = _Rebalance(service)

    async def rebalance() -> None:
        if revoked_first:
            await listener.on_partitions_revoked([TP])
        await listener.on_partitions_assigned([TP])

    consumer.during = rebalance
    await service.run()
    assert len(service.pipeline.store) == 3
    assert [offsets[TP][0] for offsets in producer.offsets] == [100]


class _LaggingAdmin(GroupOffsets):
    """Shows the producer's commits only from fetch ``lag + 1`` on, as a broker does once the
    transaction's marker is written; records how many assets the service held then."""

    def __init__(self, service: Service, producer: _Producer, lag: int) -> None:
        super().__init__(producer)
        self.service = service
        self.lag = lag
        self.held: list[int] = []

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        self.held.append(len(self.service.pipeline.store))
        if len(self.held) <= self.lag:
            return {}
        return await super().list_consumer_group_offsets(group_id, partitions)


async def test_a_revocation_hands_over_only_once_its_commit_shows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service, consumer, producer = _service(tmp_path)
    admin = _LaggingAdmin(service, producer, lag=3)
    service._admin = admin  # type: ignore[assignment]
    await service._process({TP: consumer.records})
    with caplog.at_level(logging.INFO, logger="monitor.service"):
        await _Rebalance(service).on_partitions_revoked([TP])
    assert "the commit of readings[0] showed in group" in caplog.text
    assert "(4 fetches)" in caplog.text
    assert producer.transactions == 1
    # Asked until the commit showed, each time still holding the partition's windows.
    assert admin.held == [3, 3, 3, 3]
    assert len(service.pipeline.store) == 0


async def test_a_commit_that_never_shows_delays_the_rebalance_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_module, "COMMIT_VISIBLE_WAIT_S", 0.1)
    service, consumer, producer = _service(tmp_path)
    admin = _LaggingAdmin(service, producer, lag=10**9)
    service._admin = admin  # type: ignore[assignment]
    await service._process({TP: consumer.records})
    with caplog.at_level(logging.WARNING, logger="monitor.service"):
        await _Rebalance(service).on_partitions_revoked([TP])
    assert len(admin.held) > 1
    assert len(service.pipeline.store) == 0
    assert "readings[0]" in caplog.text
    assert "does not show in group" in caplog.text


class _SilentAdmin(_LaggingAdmin):
    """A group coordinator that never answers."""

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        self.held.append(len(self.service.pipeline.store))
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_unanswered_check_delays_the_rebalance_only_so_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(service_module, "COMMIT_VISIBLE_WAIT_S", 0.1)
    service, consumer, producer = _service(tmp_path)
    admin = _SilentAdmin(service, producer, lag=0)
    service._admin = admin  # type: ignore[assignment]
    await service._process({TP: consumer.records})
    with caplog.at_level(logging.WARNING, logger="monitor.service"):
        await asyncio.wait_for(_Rebalance(service).on_partitions_revoked([TP]), timeout=5)
    assert admin.held == [3]
    assert len(service.pipeline.store) == 0
    assert "does not show in group" in caplog.text


async def test_a_revocation_with_nothing_open_asks_nothing(tmp_path: Path) -> None:
    service, _, producer = _service(tmp_path)
    admin = _LaggingAdmin(service, producer, lag=0)
    service._admin = admin  # type: ignore[assignment]
    await _Rebalance(service).on_partitions_revoked([TP])
    assert producer.transactions == 0
    assert admin.held == []


async def test_a_stop_waits_until_its_last_commit_shows(tmp_path: Path) -> None:
    # The next instance to get the partitions must not start from an older commit.
    service, _, producer = _service(tmp_path)
    admin = _LaggingAdmin(service, producer, lag=2)
    service._admin = admin  # type: ignore[assignment]
    await service.run()
    assert producer.transactions == 1
    assert len(admin.held) == 3
