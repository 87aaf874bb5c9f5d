"""The delivery consumer end to end: real Kafka, real HTTP receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.events import AlertEvent, EventType, ModelRef, SensorShare, Severity, alert_id
from monitor.metrics import Metrics
from monitor.notify import Notifier
from monitor.sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)

pytestmark = pytest.mark.kafka

NewTopicFactory = Callable[..., Awaitable[str]]
SECRET = "integration-secret"
WAIT_S = 30.0
START_MS = 1_767_225_600_000


def make_events(count: int, *, first: int = 0) -> list[AlertEvent]:
    """``count`` opened events of distinct assets (distinct alert ids, spread over partitions)."""
    events = []
    for i in range(first, first + count):
        asset = f"pump-{i}"
        start = START_MS + i * 1000
        events.append(
            AlertEvent(
                alert_id=alert_id(asset, start),
                seq=0,
                event=EventType.OPENED,
                asset=asset,
                start_ts_ms=start,
                end_ts_ms=None,
                ts_ms=start,
                score=2.0 + i,
                peak_score=2.0 + i,
                threshold=1.0,
                severity=Severity.MAJOR,
                top_sensors=(SensorShare("vibration_rms", 0.7), SensorShare("temp", 0.3)),
                model=ModelRef("pump-ae", "1", "00" * 32),
            )
        )
    return events


async def produce(bootstrap: str, topic: str, values: Iterable[tuple[bytes, bytes]]) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all") as producer:
        pending = [await producer.send(topic, value=v, key=k) for k, v in values]
        await asyncio.gather(*pending)


async def produce_events(bootstrap: str, topic: str, events: Iterable[AlertEvent]) -> None:
    await produce(bootstrap, topic, ((e.alert_id.encode(), e.to_json()) for e in events))


def free_port() -> int:
    """A port nothing listens on (bound then released: the receiver is 'down')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Receiver:
    """Records every request; de-duplicates by Idempotency-Key like a well-behaved receiver."""

    reject: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    requests: list[str] = field(default_factory=list)
    bad_signatures: int = 0

    @property
    def unique(self) -> set[str]:
        return set(self.requests)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers[IDEMPOTENCY_HEADER]
        if not verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        ):
            self.bad_signatures += 1
            return web.Response(status=401)
        assert json.loads(body)["event_id"] == key
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if key in self.reject:
            return web.Response(status=400, text="unprocessable")
        self.requests.append(key)
        return web.Response(status=204)


@asynccontextmanager
async def serving(receiver: Receiver, port: int = 0) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def settings(
    bootstrap: str, topic: str, dlq: str, port: int, group: str, *, max_attempts: int = 200
) -> Settings:
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": bootstrap},
            "model": {"path": Path("/nonexistent-bundle")},
            "alerts": {"topic": topic},
            "delivery": {
                "group_id": group,
                "dead_letter_topic": dlq,
                "max_attempts": max_attempts,
                "initial_backoff_s": 0.05,
                "max_backoff_s": 0.5,
                "webhooks": [
                    {
                        "name": "ops",
                        "url": f"http://127.0.0.1:{port}/hook",
                        "secret": SECRET,
                        "timeout_s": 2.0,
                    }
                ],
            },
            "shutdown_deadline_s": 10.0,
        }
    )


@asynccontextmanager
async def running(config: Settings, registry: CollectorRegistry) -> AsyncIterator[Notifier]:
    """A started Notifier with ``run`` in a task; stopped gracefully (drain, commit) on exit."""
    stop = asyncio.Event()
    async with Notifier(config, Metrics(registry, process=False)) as notifier:
        task = asyncio.create_task(notifier.run(stop))
        try:
            yield notifier
        finally:
            stop.set()
            async with asyncio.timeout(WAIT_S):
                await task


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            # Polling is the point: the state lives in receivers and metrics, not in an Event.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: end for tp, end in ends.items()}
    finally:
        await consumer.stop()


async def read_all(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(WAIT_S):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        assert not await consumer.getmany(timeout_ms=500)
        return records
    finally:
        await consumer.stop()


def sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_receiver_outage_loses_nothing(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic, dlq = await new_topic(partitions=3), await new_topic(partitions=1)
    group = f"{topic}-notify"
    events = make_events(12)
    await produce_events(kafka_bootstrap, topic, events)
    port = free_port()
    receiver = Receiver()
    registry = CollectorRegistry()
    config = settings(kafka_bootstrap, topic, dlq, port, group)

    async with running(config, registry):
        # Down: connections are refused and retried with backoff; nothing may be committed.
        await wait_for(
            lambda: (
                sample(
                    registry,
                    "plantwatch_webhook_deliveries_total",
                    {"endpoint": "ops", "result": "retry"},
                )
                >= 6
            ),
            "retries while the receiver is down",
        )
        await asyncio.sleep(2.0)
        assert set((await committed(kafka_bootstrap, topic, group, 3)).values()) <= {None, 0}
        async with serving(receiver, port):
            await wait_for(lambda: len(receiver.unique) == len(events), "all events delivered")
            await asyncio.sleep(0.5)  # room for stray duplicates to show up

    assert receiver.unique == {e.event_id for e in events}
    assert receiver.bad_signatures == 0
    # Delivered exactly once each: every endpoint success was committed, nothing resent.
    assert Counter(receiver.requests).most_common(1)[0][1] == 1
    ok = {"endpoint": "ops", "result": "ok"}
    parked = {"endpoint": "ops", "result": "parked"}
    assert sample(registry, "plantwatch_webhook_deliveries_total", ok) == len(events)
    assert sample(registry, "plantwatch_webhook_deliveries_total", parked) == 0
    assert await committed(kafka_bootstrap, topic, group, 3) == await end_offsets(
        kafka_bootstrap, topic, 3
    )


async def test_rejected_and_undecodable_are_parked(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic, dlq = await new_topic(partitions=3), await new_topic(partitions=1)
    group = f"{topic}-notify"
    events = make_events(6)
    rejected = events[2]
    receiver = Receiver(reject={rejected.event_id})
    registry = CollectorRegistry()
    await produce_events(kafka_bootstrap, topic, events[:3])
    await produce(kafka_bootstrap, topic, [(b"junk", b"\xffnot an event")])
    await produce_events(kafka_bootstrap, topic, events[3:])

    async with serving(receiver) as port:
        config = settings(kafka_bootstrap, topic, dlq, port, group)
        async with running(config, registry):
            await wait_for(lambda: len(receiver.unique) == len(events) - 1, "accepted events")
            parked = await read_all(kafka_bootstrap, dlq, 2)

    assert receiver.unique == {e.event_id for e in events} - {rejected.event_id}
    by_reason = {json.loads(r.value)["reason"]: r for r in parked}
    assert set(by_reason) == {"delivery_rejected", "undecodable"}

    record = by_reason["delivery_rejected"]
    doc = json.loads(record.value)
    assert record.key == rejected.alert_id.encode()
    assert dict(record.headers)["reason"] == b"delivery_rejected"
    assert doc["endpoint"] == "ops"
    assert doc["attempts"] == 1
    assert doc["last_status"] == 400
    assert doc["event_id"] == rejected.event_id
    assert AlertEvent.from_json(json.dumps(doc["event"]).encode()) == rejected
    assert doc["source"]["topic"] == topic
    assert SECRET not in record.value.decode()

    junk = by_reason["undecodable"]
    assert junk.key == b"junk"
    assert dict(junk.headers)["reason"] == b"undecodable"
    assert json.loads(junk.value)["original_b64"] == "/25vdCBhbiBldmVudA=="

    dead = "plantwatch_dead_letter_total"
    assert sample(registry, dead, {"reason": "delivery_rejected"}) == 1
    assert sample(registry, dead, {"reason": "delivery_undecodable"}) == 1
    # Parked records are committed past like delivered ones.
    assert await committed(kafka_bootstrap, topic, group, 3) == await end_offsets(
        kafka_bootstrap, topic, 3
    )


async def test_restart_resumes_from_committed_offsets(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic, dlq = await new_topic(partitions=3), await new_topic(partitions=1)
    group = f"{topic}-notify"
    before, during = make_events(8), make_events(7, first=100)
    receiver = Receiver()

    async with serving(receiver) as port:
        config = settings(kafka_bootstrap, topic, dlq, port, group)
        await produce_events(kafka_bootstrap, topic, before)
        async with running(config, CollectorRegistry()):
            await wait_for(lambda: len(receiver.unique) == len(before), "first batch")
        # Down: events keep arriving on the alerts topic.
        await produce_events(kafka_bootstrap, topic, during)
        await asyncio.sleep(0.5)
        assert len(receiver.requests) == len(before)
        async with running(config, CollectorRegistry()):
            await wait_for(lambda: len(receiver.unique) == len(before) + len(during), "backlog")
            await asyncio.sleep(1.0)  # anything wrongly re-delivered would arrive by now

    assert receiver.unique == {e.event_id for e in before + during}
    assert len(receiver.requests) == len(before) + len(during), "committed events were resent"
    assert receiver.bad_signatures == 0


async def test_rebalance_to_a_second_member_loses_nothing(
    kafka_bootstrap: str, new_topic: NewTopicFactory
) -> None:
    topic, dlq = await new_topic(partitions=4), await new_topic(partitions=1)
    group = f"{topic}-notify"
    events = make_events(120)
    # Slow enough (about 3 s for all, 4 partitions in parallel) that the second member joins
    # mid-stream and revocation finds deliveries in flight.
    receiver = Receiver(delay_s=0.1)
    await produce_events(kafka_bootstrap, topic, events)

    async with serving(receiver) as port:
        config = settings(kafka_bootstrap, topic, dlq, port, group)
        first, second = CollectorRegistry(), CollectorRegistry()
        async with running(config, first):
            await wait_for(lambda: len(receiver.unique) >= 10, "first deliveries")
            async with running(config, second):
                await wait_for(lambda: len(receiver.unique) == len(events), "all events")

    assert receiver.unique == {e.event_id for e in events}
    assert receiver.bad_signatures == 0
    ok = {"endpoint": "ops", "result": "ok"}
    delivered = [sample(r, "plantwatch_webhook_deliveries_total", ok) for r in (first, second)]
    assert all(delivered), f"no handover happened: {delivered}"
    # At-least-once: a revoked in-flight event may be sent twice, but only around the handover.
    assert len(receiver.requests) - len(events) <= 4
    assert await committed(kafka_bootstrap, topic, group, 4) == await end_offsets(
        kafka_bootstrap, topic, 4
    )


async def test_stop_is_idempotent(kafka_bootstrap: str, new_topic: NewTopicFactory) -> None:
    topic = await new_topic(partitions=1)
    config = settings(kafka_bootstrap, topic, topic, free_port(), f"{topic}-notify")
    notifier = Notifier(config, Metrics(CollectorRegistry(), process=False))
    await notifier.start()
    await notifier.stop()
    await notifier.stop()
    with pytest.raises(RuntimeError, match="start"):
        await notifier.run(asyncio.Event())
