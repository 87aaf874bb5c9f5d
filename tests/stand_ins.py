"""Stand-ins shared by the unit tests of the consume loop (no Kafka needed)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from monitor.config import DEFAULT_ROUTE
from monitor.detector import Detector, DetectorConfig
from monitor.events import ModelRef
from monitor.records import Decoder, DecoderConfig
from monitor.service import _Route
from monitor.windows import WindowStore

#: The sensors of the hand-built routes.
FEATURES = ("a", "b")


def route(
    models: Any,
    name: str = DEFAULT_ROUTE,
    *,
    store: WindowStore | None = None,
    detector: Detector | None = None,
    n: int = 1,
) -> _Route:
    """A route built by hand, as Service.start builds one from a bundle: two sensors, windows of
    4 one-second readings, an alert on any window at or above 1.0 (of the last ``n``)."""
    if store is None:
        store = WindowStore(length=4, n_features=2, interval_ms=1000)
    if detector is None:
        detector = Detector(
            DetectorConfig(k=1, n=n, m=5),
            threshold=1.0,
            features=FEATURES,
            model=ModelRef("m", "1", "0" * 64),
        )
    decoder = Decoder(DecoderConfig(features=FEATURES))
    return _Route(name, models, decoder=decoder, store=store, detector=detector)


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
