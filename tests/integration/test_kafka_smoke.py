"""Smoke tests of the real broker: topic admin, keyed produce, group consume, commit, resume."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata

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
