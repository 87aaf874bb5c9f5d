"""Stand-ins shared by the unit tests of the consume loop (no Kafka needed)."""

from __future__ import annotations

import json

from aiokafka import ConsumerRecord, TopicPartition


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
