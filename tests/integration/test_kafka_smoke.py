"""Smoke tests of the real broker: topic admin, keyed produce, group consume, commit, resume."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata

from monitor.kafka import BATCH_DRAIN, RAW_RECORDS, Record, raw_records

pytestmark = pytest.mark.kafka

NewTopicFactory = Callable[..., Awaitable[str]]
# Ten asset ids: murmur2 spreads them over all three partitions (checked below).
KEYS = [f"asset-{i}".encode() for i in range(10)]
CONSUME_TIMEOUT_S = 30.0


async def produce(bootstrap: str, topic: str, numbers: Iterable[int]) -> list[RecordMetadata]:
    """Send ``str(n)`` for each number, keyed round-robin over ``KEYS``; wait for all acks."""
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        pending = [
            await producer.send(topic, value=str(n).encode(), key=KEYS[n % len(KEYS)])
            for n in numbers
        ]
        return list(await asyncio.gather(*pending))


def group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def consume(consumer: AIOKafkaConsumer, count: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Pull with ``getmany`` until ``count`` records arrived, then check nothing else is queued."""
    records: list[ConsumerRecord[bytes, bytes]] = []
    async with asyncio.timeout(CONSUME_TIMEOUT_S):
        while len(records) < count:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    extra = await consumer.getmany(timeout_ms=1000)
    assert not extra, f"unexpected extra records: {extra}"
    assert len(records) == count
    return records


def numbers(records: Iterable[ConsumerRecord[bytes, bytes]]) -> list[int]:
    return sorted(int(r.value) for r in records if r.value is not None)


async def test_group_resumes_after_committed_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=3)
    group = f"{topic}-group"

    sent = await produce(kafka_bootstrap, topic, range(60))
    partitions_by_key: dict[bytes, set[int]] = defaultdict(set)
    for n, meta in enumerate(sent):
        partitions_by_key[KEYS[n % len(KEYS)]].add(meta.partition)
    assert all(len(p) == 1 for p in partitions_by_key.values()), "a key spans partitions"
    assert {meta.partition for meta in sent} == {0, 1, 2}

    async with group_consumer(kafka_bootstrap, topic, group) as first:
        records = await consume(first, 60)
        assert numbers(records) == list(range(60))
        for partition in range(3):
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == list(range(len(offsets))), "out-of-order or missing offsets"
        await first.commit()
        ends = await first.end_offsets([TopicPartition(topic, p) for p in range(3)])
        for tp, end in ends.items():
            assert await first.committed(tp) == end

    await produce(kafka_bootstrap, topic, range(60, 90))

    async with group_consumer(kafka_bootstrap, topic, group) as second:
        assert numbers(await consume(second, 30)) == list(range(60, 90))


async def test_group_resumes_from_explicit_commit(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic = await new_topic(partitions=3)
    group = f"{topic}-group"
    sent = await produce(kafka_bootstrap, topic, range(45))
    resume_at = 2
    expected = sorted(n for n, meta in enumerate(sent) if meta.offset >= resume_at)

    async with group_consumer(kafka_bootstrap, topic, group) as first:
        records = await consume(first, 45)
        await first.commit({TopicPartition(topic, r.partition): resume_at for r in records})

    async with group_consumer(kafka_bootstrap, topic, group) as second:
        assert numbers(await consume(second, len(expected))) == expected


async def test_raw_records_read_as_consumer_records_and_leave_other_consumers_alone(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    """The service's consumer (``key_deserializer=raw_records``) gets aiokafka's parsed record
    objects, which carry the same offset, timestamp, key and value as the ConsumerRecords a
    plain consumer in the same process still gets."""
    topic = await new_topic(partitions=3)
    await produce(kafka_bootstrap, topic, range(30))
    async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap) as producer:
        await (await producer.send(topic, value=None, key=b"gone", partition=0))  # a tombstone
        await (await producer.send(topic, value=b"unkeyed", key=None, partition=0))

    def fields(batch: dict[TopicPartition, list[Record]]) -> set[tuple[object, ...]]:
        return {
            (tp.partition, r.offset, r.timestamp, r.key, r.value)
            for tp, records in batch.items()
            for r in records
        }

    got: dict[str, dict[TopicPartition, list[Record]]] = {}
    for name, marker in (("raw", raw_records), ("plain", None)):
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            key_deserializer=marker,
        )
        async with consumer:
            batch: dict[TopicPartition, list[Record]] = defaultdict(list)
            async with asyncio.timeout(CONSUME_TIMEOUT_S):
                while sum(map(len, batch.values())) < 32:
                    for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                        batch[tp].extend(records)
            got[name] = batch
    assert RAW_RECORDS, "aiokafka's internals changed: the service's fast path is off"
    raw = [r for records in got["raw"].values() for r in records]
    plain = [r for records in got["plain"].values() for r in records]
    assert not any(isinstance(r, ConsumerRecord) for r in raw)
    assert all(isinstance(r, ConsumerRecord) for r in plain)
    assert fields(got["raw"]) == fields(got["plain"])
    assert len(fields(got["raw"])) == 32
    unusual = {(r.key, r.value) for r in raw if r.key is None or r.value is None}
    assert unusual == {(b"gone", None), (None, b"unkeyed")}


async def test_batch_drain_reads_what_aiokafka_yields_under_read_committed(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    """A marked consumer takes records a record batch at a time (monitor.kafka's batch drain):
    under ``read_committed`` it skips an aborted transaction and the control batches, keeps a
    batch taken in part for the next call (``max_records`` smaller than a batch), and ends at
    the same position, with the same records in the same order, as aiokafka's own generator
    in a plain consumer; ``getone`` reads the same as ``getmany``."""
    topic = await new_topic(partitions=1)
    tp = TopicPartition(topic, 0)
    expected: list[bytes] = []

    async def plain_batch(first: int) -> None:
        # Sent without waiting for each ack, so several records share a record batch.
        async with AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=50) as producer:
            values = [f"plain-{n}".encode() for n in range(first, first + 12)]
            await asyncio.gather(*[await producer.send(topic, value=v, key=b"k") for v in values])
        expected.extend(values)

    await plain_batch(0)
    async with AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"smoke-{topic}", linger_ms=50
    ) as producer:
        for outcome in ("commit", "abort", "commit"):
            await producer.begin_transaction()
            values = [f"{outcome}-{len(expected)}-{n}".encode() for n in range(5)]
            for v in values:
                await producer.send(topic, value=v, key=b"k")
            if outcome == "commit":
                await producer.commit_transaction()
                expected.extend(values)
            else:
                await producer.abort_transaction()
    await plain_batch(100)

    async def read(marker: Callable[[bytes | None], bytes | None] | None, one: bool) -> Any:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
            key_deserializer=marker,
        )
        async with consumer:
            got: list[Record] = []
            async with asyncio.timeout(CONSUME_TIMEOUT_S):
                while len(got) < len(expected):
                    if one:
                        got.append(await consumer.getone())
                    else:
                        for records in (
                            await consumer.getmany(timeout_ms=500, max_records=3)
                        ).values():
                            assert len(records) <= 3
                            got.extend(records)
            assert not await consumer.getmany(timeout_ms=1000)
            return [(r.offset, r.key, r.value) for r in got], await consumer.position(tp)

    assert BATCH_DRAIN, "aiokafka's internals changed: the service's batch drain is off"
    plain = await read(None, one=False)
    assert [value for _, _, value in plain[0]] == expected
    assert await read(raw_records, one=False) == plain
    assert await read(raw_records, one=True) == plain
    # The offsets include the aborted records and the three transaction markers, which
    # neither consumer returns; both end past the last record.
    assert plain[0][-1][0] == len(expected) + 5 + 3 - 1
    assert plain[1] == plain[0][-1][0] + 1
