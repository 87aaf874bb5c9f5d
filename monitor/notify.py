"""The delivery consumer: alert events from the alerts topic to every configured webhook.

Runs inside ``serve`` or alone as ``plantwatch notify``. Contract: **at-least-once**. A
partition's offset is committed only once its event was delivered to every endpoint or parked on
the delivery dead-letter topic, so a receiver outage (minutes) or a crash loses nothing; after a
crash or rebalance the uncommitted tail is sent again and receivers de-duplicate by the
``Idempotency-Key`` header (the event's ``event_id``).

Ordering: records of one partition are delivered strictly in offset order (one task per
partition, one event at a time); partitions proceed independently. While a partition's batch is
being delivered it is paused, and the consume loop keeps calling ``getmany`` so that long retries
never exceed ``max.poll.interval.ms`` and get the member thrown out of the group.

Rebalances: on revocation a partition's delivery finishes its current event (within a short
grace period, else it is cancelled), whatever finished is committed, and the new owner resends
the rest.

Alertmanager endpoints: the notifier remembers the latest event of every alert it has seen open
and re-posts them every ``ALERTMANAGER_RESEND_S`` with a fresh lease (see
:mod:`monitor.sinks.webhook`), so Alertmanager never times out an alert plantwatch still holds
open; a resolved event whose delivery failed is re-posted the same way until one post succeeds.
This memory is per process and per partition: a restarted notifier, or the new owner of a
partition, learns of open alerts from their next event, and until then Alertmanager keeps them
for the rest of their lease (``ALERTMANAGER_LEASE_S``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaConnectionError, KafkaError

from monitor.config import Settings
from monitor.errors import KafkaUnavailableError
from monitor.events import AlertEvent, EventDecodeError, EventType
from monitor.kafka import client_kwargs, start_error
from monitor.lifecycle import Lifecycle
from monitor.metrics import Metrics
from monitor.sinks.webhook import (
    ALERTMANAGER_RESEND_S,
    DeliveryResult,
    RetryPolicy,
    WebhookSender,
)

log = logging.getLogger(__name__)

#: aiokafka ships no type information, so this alias is ``Any`` to mypy; it documents intent.
_Record: TypeAlias = ConsumerRecord

UNDECODABLE: Final = "undecodable"
#: Records per ``getmany``: small, so a stop or revocation has little queued work to abandon.
FETCH_MAX_RECORDS: Final = 100
FETCH_TIMEOUT_MS: Final = 200
#: Commit a partition at least this often while a long batch is being delivered.
COMMIT_INTERVAL_S: Final = 1.0
#: How long a revoked partition's in-flight delivery may finish before it is cancelled.
REVOKE_GRACE_S: Final = 5.0


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._notifier._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("delivery partitions assigned: %s", sorted(str(tp) for tp in assigned))


class Notifier(Lifecycle):
    """Consumes alert events and delivers each to all webhooks; see the module docstring.

    ``start()`` creates the consumer, the dead-letter producer and one shared HTTP session;
    ``run(stop_event)`` loops until the event is set, then finishes the in-flight events (within
    ``drain_deadline_s``) and commits; ``stop()`` closes everything and is idempotent.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        drain_deadline_s: float | None = None,
        rng: random.Random | None = None,
        resend_interval_s: float | None = None,
    ) -> None:
        self._settings = settings
        self._delivery = settings.delivery
        self._metrics = metrics
        self._drain_deadline_s = (
            settings.shutdown_deadline_s if drain_deadline_s is None else drain_deadline_s
        )
        self._rng = rng or random.Random()
        self._resend_interval_s = (
            ALERTMANAGER_RESEND_S if resend_interval_s is None else resend_interval_s
        )
        #: Alertmanager endpoints' view: the latest event of each alert still to be re-posted
        #: (open, or resolved but not yet delivered), with the partition it came from.
        self._am_alerts: dict[str, tuple[TopicPartition, AlertEvent]] = {}
        self._am_senders: list[WebhookSender] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._senders: list[WebhookSender] = []
        self._tasks: dict[TopicPartition, asyncio.Task[None]] = {}
        #: Next offset to commit per partition (last finished record + 1), and what is committed.
        self._done: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._last_commit: dict[TopicPartition, float] = {}
        self._commit_lock = asyncio.Lock()
        self._draining = False
        #: Partitions being revoked: their tasks stop after the current event.
        self._revoking: set[TopicPartition] = set()
        self._internal_stop = asyncio.Event()
        self._running: asyncio.Future[None] | None = None
        self._started = False
        self._stopped = False

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to Kafka and open the HTTP session."""
        if self._started:
            return
        self._started = True
        kwargs = client_kwargs(self._settings.kafka)
        self._session = aiohttp.ClientSession()
        policy = RetryPolicy.from_settings(self._delivery)
        try:
            # Each sender loads its endpoint's TLS files now: a bad one fails the start.
            self._senders = [
                WebhookSender(self._session, endpoint, policy, self._metrics, rng=self._rng)
                for endpoint in self._delivery.webhooks
            ]
        except BaseException:
            await self.stop()
            raise
        self._am_senders = [s for s in self._senders if s.endpoint.format == "alertmanager"]
        if not self._senders:
            log.warning("no webhooks configured: alert events will be consumed and dropped")
        self._producer = AIOKafkaProducer(**kwargs, acks="all", enable_idempotence=True)
        self._consumer = AIOKafkaConsumer(
            **kwargs,
            group_id=self._delivery.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # serve writes alert events in transactions: never deliver an aborted batch's.
            isolation_level="read_committed",
        )
        try:
            await self._producer.start()
            await self._consumer.start()
            self._consumer.subscribe([self._settings.alerts.topic], listener=_Revocations(self))
        except KafkaConnectionError as exc:
            await self.stop()
            raise await start_error(self._settings.kafka, exc) from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Finish (within the deadline), commit and close; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        self._internal_stop.set()
        if self._running is not None and not self._running.done():
            # run() drains and commits; give it its deadline plus a margin for the commit.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                async with asyncio.timeout(self._drain_deadline_s + 10.0):
                    await asyncio.shield(self._running)
        await self._cancel_tasks(list(self._tasks.values()))
        if self._consumer is not None:
            await self._commit_done()
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                await self._producer.stop()
        if self._session is not None:
            await self._session.close()

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop_event: asyncio.Event | None = None) -> None:
        """Consume and deliver until ``stop_event`` is set or ``stop()`` is called."""
        if self._consumer is None or self._stopped:
            raise RuntimeError("Notifier.run() needs start() first and no stop()")
        consumer = self._consumer
        self._running = asyncio.get_running_loop().create_future()
        stop = stop_event or asyncio.Event()
        resender = (
            asyncio.create_task(self._resend_loop(), name="notify-am-resend")
            if self._am_senders
            else None
        )
        try:
            while not (stop.is_set() or self._internal_stop.is_set()):
                batches = await consumer.getmany(
                    timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS
                )
                # Reap first: a partition whose task just resumed it may already be back here.
                self._reap()
                for tp, records in batches.items():
                    if records:
                        consumer.pause(tp)
                        self._tasks[tp] = asyncio.create_task(
                            self._deliver_partition(tp, records), name=f"notify-{tp}"
                        )
            await self._drain()
        finally:
            if resender is not None:
                await self._cancel_tasks([resender])
            self._running.set_result(None)

    def _reap(self) -> None:
        """Forget finished partition tasks; a failed one (Kafka down) ends the run."""
        for tp, task in list(self._tasks.items()):
            if task.done():
                del self._tasks[tp]
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc

    async def _drain(self) -> None:
        """Let in-flight partitions finish their current event, then commit."""
        self._draining = True
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._drain_deadline_s)
            if pending:
                log.warning(
                    "delivery stop deadline (%.1fs) passed with %d partition(s) in flight; "
                    "their uncommitted events will be sent again on restart",
                    self._drain_deadline_s,
                    len(pending),
                )
            await self._cancel_tasks(pending)
        self._reap()
        await self._commit_done()

    async def _cancel_tasks(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        tasks = [t for t in tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _deliver_partition(self, tp: TopicPartition, records: list[_Record]) -> None:
        """Deliver one partition's batch in offset order, committing as it goes."""
        try:
            for record in records:
                if self._draining or tp in self._revoking:
                    break  # the current event was finished; the rest waits for the next owner
                await self._handle(record)
                self._done[tp] = record.offset + 1
                if time.monotonic() - self._last_commit.get(tp, 0.0) >= COMMIT_INTERVAL_S:
                    await self._commit_done(only={tp})
            await self._commit_done(only={tp})
        finally:
            consumer = self._consumer
            if consumer is not None and tp in consumer.assignment() and not self._draining:
                consumer.resume(tp)

    async def _handle(self, record: _Record) -> None:
        """Deliver one record to every endpoint, parking what cannot be delivered."""
        try:
            if record.value is None:
                raise EventDecodeError("not an alert event: empty value")
            event = AlertEvent.from_json(record.value)
        except EventDecodeError as exc:
            await self._park_undecodable(record, str(exc))
            return
        results = await asyncio.gather(*(sender.deliver(event) for sender in self._senders))
        for result in results:
            if not result.delivered:
                await self._park_event(record, event, result)
        if self._am_senders:
            am_delivered = all(
                r.delivered
                for s, r in zip(self._senders, results, strict=True)
                if s in self._am_senders
            )
            self._remember_for_alertmanager(record, event, delivered=am_delivered)

    # --- Alertmanager re-sends ----------------------------------------------------------------

    def _remember_for_alertmanager(
        self, record: _Record, event: AlertEvent, *, delivered: bool
    ) -> None:
        known = self._am_alerts.get(event.alert_id)
        if known is not None and known[1].seq > event.seq:
            return  # a redelivered older event: the newer state stands
        if event.event is EventType.RESOLVED and delivered:
            self._am_alerts.pop(event.alert_id, None)
        else:
            self._am_alerts[event.alert_id] = (
                TopicPartition(record.topic, record.partition),
                event,
            )

    async def _resend_loop(self) -> None:
        """Re-post every remembered alert to each Alertmanager endpoint, once per interval."""
        while True:
            await asyncio.sleep(self._resend_interval_s)
            snapshot = dict(self._am_alerts)
            if not snapshot:
                continue
            events = [event for _, event in snapshot.values()]
            sent = await asyncio.gather(*(s.resend(events) for s in self._am_senders))
            if all(sent):
                for alert_id, (_, event) in snapshot.items():
                    current = self._am_alerts.get(alert_id)
                    if (
                        event.event is EventType.RESOLVED
                        and current is not None
                        and (current[1] is event)
                    ):
                        del self._am_alerts[alert_id]

    # --- dead letters -------------------------------------------------------------------------

    async def _send_dead_letter(
        self, key: bytes | None, doc: dict[str, Any], headers: list[tuple[str, bytes]]
    ) -> None:
        assert self._producer is not None
        value = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        try:
            # Waiting for the ack is what makes committing the source offset safe.
            await self._producer.send_and_wait(
                self._delivery.dead_letter_topic, value=value, key=key, headers=headers
            )
        except KafkaError as exc:
            raise KafkaUnavailableError(
                f"cannot write to dead-letter topic {self._delivery.dead_letter_topic}: {exc!r}"
            ) from None

    @staticmethod
    def _source(record: _Record) -> dict[str, Any]:
        return {"topic": record.topic, "partition": record.partition, "offset": record.offset}

    async def _park_event(self, record: _Record, event: AlertEvent, result: DeliveryResult) -> None:
        reason = result.outcome.value
        log.warning(
            "webhook %s: parked event %s on %s after %d attempt(s): %s (last status %s, error %s)",
            result.endpoint,
            event.event_id,
            self._delivery.dead_letter_topic,
            result.attempts,
            reason,
            result.last_status,
            result.last_error,
        )
        doc = {
            "reason": reason,
            "endpoint": result.endpoint,
            "attempts": result.attempts,
            "last_status": result.last_status,
            "last_error": result.last_error,
            "event_id": event.event_id,
            "event": event.to_dict(),
            "source": self._source(record),
            "parked_at_ms": int(time.time() * 1000),
        }
        headers = [
            ("reason", reason.encode()),
            ("endpoint", result.endpoint.encode()),
            ("event_id", event.event_id.encode()),
        ]
        await self._send_dead_letter(event.alert_id.encode(), doc, headers)
        self._metrics.dead_letters.labels(reason).inc()

    async def _park_undecodable(self, record: _Record, error: str) -> None:
        log.warning(
            "undecodable record at %s[%d]@%d parked on %s: %s",
            record.topic,
            record.partition,
            record.offset,
            self._delivery.dead_letter_topic,
            error,
        )
        raw: bytes = record.value or b""
        doc = {
            "reason": UNDECODABLE,
            "endpoint": None,
            "attempts": 0,
            "last_status": None,
            "last_error": error,
            "event": None,
            # The bytes are not JSON (or not ours), so they travel base64-encoded.
            "original_b64": base64.b64encode(raw).decode(),
            "source": self._source(record),
            "parked_at_ms": int(time.time() * 1000),
        }
        await self._send_dead_letter(record.key, doc, [("reason", UNDECODABLE.encode())])
        self._metrics.dead_letters.labels(f"delivery_{UNDECODABLE}").inc()

    # --- offsets ------------------------------------------------------------------------------

    async def _commit_done(self, *, only: set[TopicPartition] | None = None) -> None:
        """Commit finished offsets not yet committed; a failed commit only means resending."""
        consumer = self._consumer
        if consumer is None:
            return
        async with self._commit_lock:
            assigned = consumer.assignment()
            offsets = {
                tp: offset
                for tp, offset in self._done.items()
                if (only is None or tp in only)
                and tp in assigned
                and offset > self._committed.get(tp, -1)
            }
            if not offsets:
                return
            try:
                # Bounded: aiokafka retries a commit for as long as the coordinator is away.
                async with asyncio.timeout(self._settings.kafka.request_timeout_ms / 1000):
                    await consumer.commit(offsets)
            except (KafkaError, TimeoutError) as exc:
                # At-least-once: the next owner of these partitions resends from the last commit.
                log.warning("could not commit delivery offsets %s: %r", offsets, exc)
                return
            now = time.monotonic()
            for tp, offset in offsets.items():
                self._committed[tp] = offset
                self._last_commit[tp] = now

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoking |= revoked
        try:
            tasks = [task for tp, task in self._tasks.items() if tp in revoked]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=REVOKE_GRACE_S)
                await self._cancel_tasks(pending)
            await self._commit_done(only=revoked)
        finally:
            self._revoking -= revoked
        # The partition's next owner re-posts these alerts once it sees their next event.
        for alert_id in [a for a, (tp, _) in self._am_alerts.items() if tp in revoked]:
            del self._am_alerts[alert_id]
        for tp in revoked:
            task = self._tasks.pop(tp, None)
            if task is not None and not task.cancelled() and task.exception() is not None:
                log.error("delivery of revoked partition %s failed: %r", tp, task.exception())
            self._done.pop(tp, None)
            self._committed.pop(tp, None)
            self._last_commit.pop(tp, None)
