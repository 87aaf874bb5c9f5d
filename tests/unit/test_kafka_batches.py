"""The batch drain of marked consumers (monitor.kafka) against aiokafka's own record generator,
on record batches built and parsed by aiokafka's record code (the broker-backed checks,
transactions included, are in tests/integration/test_kafka_smoke.py)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from aiokafka.consumer.fetcher import PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from monitor.kafka import BATCH_DRAIN, _take, raw_records

TP = TopicPartition("readings", 0)
READ_UNCOMMITTED = 0


def batch(base: int, n: int) -> bytes:
    """A record batch of ``n`` records at offsets ``base …``, as the broker stores it."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(n):
        builder.append(
            i, timestamp=1_000 + i, key=b"pump-01", value=f"{base + i}".encode(), headers=[]
        )
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", base)  # the base offset, outside the CRC
    return bytes(data)


def partition(data: bytes, fetch_offset: int, marker: Any) -> Any:
    return PartitionRecords(
        TP, MemoryRecords(data), [], fetch_offset, marker, None, True, READ_UNCOMMITTED
    )


def fields(records: list[Any]) -> list[tuple[int, int, bytes, bytes]]:
    return [(r.offset, r.timestamp, r.key, r.value) for r in records]


DATA = batch(0, 5) + batch(5, 4) + batch(9, 7)


def test_the_drain_is_on() -> None:
    assert BATCH_DRAIN, "aiokafka's internals changed: the service's batch drain is off"


@pytest.mark.parametrize("fetch_offset", [0, 2, 5, 12])
@pytest.mark.parametrize("max_records", [1, 3, 4, 5, 100, None])
def test_takes_what_the_generator_yields(fetch_offset: int, max_records: int | None) -> None:
    """Every record from the fetch offset on, in order, at most ``max_records`` a call, with
    the fetch offset after each call just past the last record taken."""
    want = list(partition(DATA, fetch_offset, None))
    records = partition(DATA, fetch_offset, raw_records)
    got: list[Any] = []
    while taken := _take(records, max_records):
        assert len(taken) <= (max_records or len(DATA))
        got += taken
        assert records.next_fetch_offset == taken[-1].offset + 1
    assert fields(got) == fields(want)
    assert records.next_fetch_offset == 16
    assert records.plantwatch_pending is None


def test_a_bad_crc_comes_after_the_records_before_it() -> None:
    """aiokafka's generator raises on a batch whose CRC fails, and the records it yielded
    before in that same call are lost with the call; the drain returns them and raises on the
    next call, after which the partition's records are done (fetched again from there)."""
    bad = bytearray(batch(5, 4))
    bad[-1] ^= 0xFF
    data = batch(0, 5) + bytes(bad) + batch(9, 7)
    plain = partition(data, 0, None)
    with pytest.raises(CorruptRecordException):
        list(plain)
    records = partition(data, 0, raw_records)
    assert [r.offset for r in _take(records, None)] == [0, 1, 2, 3, 4]
    assert records.next_fetch_offset == 5
    with pytest.raises(CorruptRecordException, match="Invalid CRC"):
        _take(records, None)
    assert _take(records, None) == []
    assert records.next_fetch_offset == 5
