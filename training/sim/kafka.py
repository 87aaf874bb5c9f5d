"""Stream a simulated plant to Kafka as JSON readings, paced to a target rate."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from monitor.errors import ConfigError, KafkaUnavailableError, PlantwatchError
from monitor.records import Reading, encode_json_batch, encode_json_reading
from training.sim.engine import PlantSimulator

log = logging.getLogger(__name__)

#: (key, value, readings in the message)
_Message = tuple[bytes, bytes, int]


class _TokenBucket:
    """Paces readings to ``rate`` per second; a deficit is repaid by sleeping."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        # Allow a tenth of a second of burst so sleeps are not microsecond-sized.
        self._capacity = max(1.0, rate * 0.1)
        self._tokens = self._capacity
        self._last = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        self._tokens -= n
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


class _Encoder:
    """Turns simulator blocks into Kafka messages, keeping partial batches across blocks."""

    def __init__(self, sim: PlantSimulator, batch_size: int) -> None:
        self._sim = sim
        self._batch_size = batch_size
        self._keys = [a.encode() for a in sim.assets]
        self._pending: list[list[Reading]] = [[] for _ in sim.assets]
        self._blocks = sim.arrays()

    def next_messages(self) -> list[_Message] | None:
        """The next block's messages, or the leftovers, then None when done."""
        sensors = self._sim.sensors
        try:
            ts, values = next(self._blocks)
        except StopIteration:
            leftovers = [
                (self._keys[a], encode_json_batch(batch), len(batch))
                for a, batch in enumerate(self._pending)
                if batch
            ]
            self._pending = [[] for _ in self._sim.assets]
            return leftovers or None
        out: list[_Message] = []
        rows = values.tolist()
        for step_ts, step in zip(ts.tolist(), rows, strict=True):
            for a, row in enumerate(step):
                reading = dict(zip(sensors, row, strict=True))
                if self._batch_size == 1:
                    value = encode_json_reading(self._sim.assets[a], step_ts, reading)
                    out.append((self._keys[a], value, 1))
                    continue
                batch = self._pending[a]
                batch.append(Reading(self._sim.assets[a], step_ts, reading))
                if len(batch) == self._batch_size:
                    out.append((self._keys[a], encode_json_batch(batch), len(batch)))
                    self._pending[a] = []
        return out


async def produce(
    sim: PlantSimulator,
    bootstrap_servers: str,
    topic: str,
    *,
    rate: float = 0.0,
    batch_size: int = 1,
    linger_ms: int = 20,
) -> int:
    """Produce every reading of ``sim`` to ``topic``; return how many readings were delivered.

    ``rate`` is readings per second (0: as fast as the broker takes them). Messages are keyed by
    asset id; with ``batch_size`` > 1 each message is a JSON list of that many readings of one
    asset. Ground truth is ``sim.faults``.
    """
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate >= 0:
        raise ConfigError(f"rate must be >= 0 readings/s, got {rate!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=linger_ms)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        await producer.stop()
        raise KafkaUnavailableError(f"cannot reach Kafka at {bootstrap_servers}: {exc}") from exc
    bucket = _TokenBucket(rate) if rate > 0 else None
    encoder = _Encoder(sim, batch_size)
    failures: list[BaseException] = []
    delivered = 0

    def on_delivery(fut: asyncio.Future[object], n: int) -> None:
        nonlocal delivered
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            delivered += n
        elif not failures:
            failures.append(exc)

    try:
        started = time.monotonic()
        while True:
            # Simulation and JSON encoding run off the event loop.
            messages = await asyncio.to_thread(encoder.next_messages)
            if messages is None:
                break
            for key, value, n in messages:
                if failures:
                    break
                if bucket is not None:
                    await bucket.take(n)
                fut = await producer.send(topic, value=value, key=key)
                fut.add_done_callback(lambda f, n=n: on_delivery(f, n))
            if failures:
                break
        await producer.flush()
    except KafkaError as exc:
        raise KafkaUnavailableError(f"producing to {topic} at {bootstrap_servers}: {exc}") from exc
    finally:
        await producer.stop()
    if failures:
        raise PlantwatchError(f"producing to {topic} failed: {failures[0]}")
    log.info("produced %d readings to %s in %.1f s", delivered, topic, time.monotonic() - started)
    return delivered
