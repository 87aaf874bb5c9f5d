"""Stand-ins shared by the unit tests of the consume loop (no Kafka needed)."""

from __future__ import annotations

import json
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata


def json_record(
    tp: TopicPartition, offset: int, asset: str, ts_ms: int, values: list[float]
) -> ConsumerRecord[bytes, bytes]:
    """A record as aiokafka hands it over: one JSON reading keyed by its asset."""
    value = json.dumps({"asset": asset, "ts": ts_ms, "values": values}).encode()
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=ts_ms,
        timestamp_type=0,
        key=asset.encode(),
        value=value,
        checksum=None,
        serialized_key_size=len(asset),
        serialized_value_size=len(value),
        headers=(),
    )


class _Committing(Protocol):
    #: Every ``send_offsets_to_transaction`` call's offsets, in order.
    offsets: list[dict[TopicPartition, tuple[int, str]]]


class GroupOffsets:
    """An admin client whose group offsets are what ``producer`` (a producer stand-in that
    records its ``send_offsets_to_transaction`` calls) committed last, per partition."""

    def __init__(self, producer: _Committing) -> None:
        self.producer = producer

    async def list_consumer_group_offsets(
        self, group_id: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        committed = {tp: c for offsets in self.producer.offsets for tp, c in offsets.items()}
        return {tp: OffsetAndMetadata(*committed[tp]) for tp in partitions if tp in committed}

    async def close(self) -> None:
        pass
