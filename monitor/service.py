"""``plantwatch serve``: the only place that wires the data path together.

Per ``getmany`` batch::

    records ─ decode/validate ─┬─ rejected ─────────────────────────────┐
                               └─ window store ─ ready windows           │
                                    └─ score (worker thread) ─ detector  │
                                       (overlaps the next chunk's, or    │
                                        the next batch's, decode and     │
                                        windows; detected in order)      │
                                          └─ alert events ──┐            │
    one Kafka transaction:  alerts topic  ◄─────────────────┘            │
    (the batches of up to   dead-letter topic  ◄─────────────────────────┘
    commit_interval_ms)     consumer offsets (+ commit metadata, see monitor.offsets)

With ``routes`` (a bundle per group of assets), each route has its own decoder, window store
and detector, shaped by its bundle; they share the consumer, the scoring threads and each
transaction, whose commit metadata holds every route's alert state.

Because alert events, dead letters and offsets commit atomically, a crash at any point either
keeps all of a transaction's effects or none: its batches are then consumed again and, being
deterministic, yield the same events with the same ids. Consumers of the alerts topic read
with ``isolation_level="read_committed"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import math
import socket
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import __version__ as aiokafka_version
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, ProducerFenced
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from monitor import native, offsets
from monitor.config import DEFAULT_ROUTE, DetectorSettings, Settings
from monitor.detector import Detector, DetectorConfig, held_windows
from monitor.errors import ConfigError, DataError, KafkaUnavailableError, PlantwatchError
from monitor.events import AlertEvent
from monitor.http import OpsServer
from monitor.kafka import (
    BATCH_DRAIN,
    RAW_RECORDS,
    Record,
    client_kwargs,
    raw_records,
    start_error,
)
from monitor.lifecycle import Lifecycle
from monitor.metrics import Metrics
from monitor.model import LoadedModel, ModelManager
from monitor.notify import Notifier
from monitor.records import DecodedBatch, Decoder, DecoderConfig, Rejection, asset_matcher
from monitor.windows import ReadyBatch, WindowStore
from monitor.windows import RejectReason as WindowReject

logger = logging.getLogger(__name__)

#: Windows made ready at a time (bytes): larger batches are appended and scored in chunks of
#: about this size, but at least MIN_CHUNK_READINGS readings (8 MiB since session 8, the size
#: the 2 M-reading benchmark ran with; 4, 8 and 32 MiB were within its noise).
CHUNK_BYTES = 8 << 20
MIN_CHUNK_READINGS = 1024
#: Ready windows handed to the scoring thread as soon as a partition's records leave this many
#: pending, so that ONNX Runtime scores them while the loop decodes the next partition.
OVERLAP_WINDOWS = 1024
#: Jobs of ready windows the loop may hand to the scoring threads before it waits for the
#: oldest, with one scoring thread (one more per further thread): more than one keeps the
#: thread busy while the loop's work per job varies.
SCORING_AHEAD = 2
#: With routes, each route's windows are jobs of their own, so a batch makes more, smaller
#: jobs: as many more may be ahead per route, up to this many routes' worth (two routes, JSON
#: single readings: 218-225k readings/s against 192-205k without, session 16).
ROUTES_AHEAD = 4
#: Python's GIL switch interval while the service runs (its default is 5 ms). A scoring thread
#: needs the GIL for a moment at the start and end of each ONNX Runtime run; with the default
#: it waited up to 5 ms each time for the busy event loop to let go, and the loop then waited
#: for its scores: JSON single readings ran 7-13 % faster with 0.1-0.2 ms (session 11).
SWITCH_INTERVAL_S = 0.0002
#: Services started and not stopped in this process, and the switch interval before the first.
_switching = {"services": 0, "before": 0.0}
#: Windows per batch whose end-to-end latency is observed (an even sample).
LATENCY_SAMPLES = 64
#: After the alert state did not fit in a partition's commit metadata, commit without it for
#: this long before trying again; warn about it at most this often per partition.
BARE_COMMIT_RETRY_S = 30.0
BARE_COMMIT_WARN_S = 600.0
#: Live readings refused by ``windows.max_assets`` are logged at most this often, with the
#: count since the last line (the dead-letter topic has each message).
CAP_WARN_S = 60.0
#: How often the broker is probed for /readyz.
PROBE_INTERVAL_S = 5.0
#: A revocation or a stop waits at most this long for its commit to show in the group's offsets (see
#: Service._await_visible), polling every COMMIT_VISIBLE_POLL_S.
COMMIT_VISIBLE_WAIT_S = 5.0
COMMIT_VISIBLE_POLL_S = 0.02
#: Message keys remembered with the route whose asset they name (see Service._owners).
KEY_ROUTE_CACHE = 1 << 17


@dataclass
class _Outgoing:
    """What a batch produced, or the batches since the last commit (merged once every window
    of theirs was detected), committed together in one transaction (every
    ``input.commit_interval_ms``)."""

    alerts: list[AlertEvent] = field(default_factory=list)
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )
    #: Counter increments, applied only once the batch has committed: a batch rewound after a
    #: failed transaction is consumed again and must not count twice (a test waiting for
    #: "every reading counted" would otherwise stop the service before the last ones scored).
    counts: list[tuple[PromCounter, float]] = field(default_factory=list)

    #: Per partition, the offset of the last record handled: what the transaction commits.
    last_offset: dict[TopicPartition, int] = field(default_factory=dict)
    #: ``time.monotonic()`` when the first of these batches was handled.
    since: float = field(default_factory=time.monotonic)
    #: The window store's :meth:`~WindowStore.min_needed_offsets` at the end of the (last)
    #: batch, where a restart after its commit must read from, when the batch may be committed
    #: after the next one's readings were appended (None: not taken, the store is asked at the
    #: commit).
    needed: dict[int, int] | None = None
    #: Jobs of this batch with the scoring threads, not yet detected; whether the batch has
    #: been handled to its end (no more jobs to come).
    jobs: int = 0
    handled: bool = False

    #: Seconds spent per stage of the data path in the batch being handled (observed, then
    #: cleared, once per batch).
    stages: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def count(self, counter: PromCounter, amount: float = 1) -> None:
        if amount:
            self.counts.append((counter, amount))

    def merge(self, later: _Outgoing) -> None:
        """Add a later batch's output (committed together with this one's)."""
        self.alerts.extend(later.alerts)
        self.scores.extend(later.scores)
        self.dead_letters.extend(later.dead_letters)
        self.counts.extend(later.counts)
        self.last_offset.update(later.last_offset)
        self.needed = later.needed

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] += time.perf_counter() - t0


@dataclass
class _Tally:
    """Readings of a batch by outcome (added to the metrics once per batch)."""

    ok: int = 0
    invalid: int = 0
    #: Messages of other services' assets (``input.other_asset_patterns``), skipped.
    other_assets: int = 0
    carried: int = 0
    resets: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


@dataclass
class _Scoring:
    """Windows handed to the scoring thread; detected, in order, once scored."""

    assets: list[str]
    ts_ms: npt.NDArray[np.int64]
    route: _Route
    model: LoadedModel
    #: The batch whose windows these are (its alert events and scores go there).
    out: _Outgoing
    #: (scores, per-sensor errors, seconds in ONNX Runtime)
    future: asyncio.Future[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]]
    #: Windows held by ``detector.hold`` (None without it).
    held: npt.NDArray[np.bool_] | None = None


@dataclass
class _Route:
    """A bundle and the assets it scores, with the pure core of the data path for them, shaped
    by the bundle loaded at start: ``model.path``'s route (``default``) and one per entry of
    ``routes``. A message keyed by a route's asset is decoded by that route alone; an unkeyed
    one by every route, each keeping its own assets' readings (see Service._decode)."""

    name: str
    models: ModelManager
    decoder: Decoder
    store: WindowStore
    detector: Detector
    #: ``detector.hold``: the sensor's index in the bundle's features and its running level.
    hold: tuple[int, float] | None = None
    #: The model the detector was last set to (a reload switches it at the next job).
    model_in_use: LoadedModel | None = None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self.service = service

    # aiokafka runs these from its coordinator task, possibly while a batch is being scored or
    # committed. Holding the batch lock, a revocation waits until the batch in flight has
    # committed: otherwise its transaction would commit the revoked partition with the window
    # state already forgotten (start = last + 1, no replay for the next owner: the first L - 1
    # windows of every asset there went unscored; found by tests/integration/test_scaleout.py).
    # Batches handled since the last commit are committed first, while the partitions are
    # still ours. If that fails, their transaction is aborted and the partitions, whoever gets
    # them next, are read again from the last commit (an eager rebalance revokes them all).
    #
    # From a revocation until the next assignment the consume loop drops what it fetched: see
    # run().
    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.service._batch_lock:
            self.service._reassigning = True
            last_offset: dict[TopicPartition, int] = {}
            for batch in (self.service._open, *self.service._unfinished):
                if batch is not None:
                    last_offset.update(batch.last_offset)
            if last_offset:
                logger.info(
                    "committing what is open before the rebalance: %s",
                    ", ".join(f"{tp.partition}@{last}" for tp, last in last_offset.items()),
                )
            try:
                await self.service._flush_for_handover()
            except _NotCommittedError as exc:
                logger.warning("%s; read again from the last commit after the rebalance", exc)
            self.service._revoke(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        async with self.service._batch_lock:
            try:
                await self.service._assign(assigned)
            finally:
                self.service._reassigning = False


class Service(Lifecycle):
    """The monitor: consume readings, score windows, produce alerts, commit — until stopped."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, max_asset_labels=settings.metrics.max_asset_labels)
        #: ``model.path``'s bundle, then each route's (in ``routes`` order).
        self.models = self._manager(settings.model.path, DEFAULT_ROUTE)
        self._route_models = [self._manager(r.model, r.name) for r in settings.routes]
        self._stop = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._ops: OpsServer | None = None
        self._notifier: Notifier | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._broker_ok = False
        self._started = False
        # Per assigned partition: offsets up to here were scored before (replay, do not score).
        self._replay_through: dict[TopicPartition, int] = {}
        self._position: dict[TopicPartition, int] = {}
        self._partition_assets: dict[TopicPartition, set[str]] = defaultdict(set)
        # The window store keys partitions by int; topics may share partition numbers.
        self._slots: dict[TopicPartition, int] = {}
        #: The routes in the order they claim assets: those of ``routes``, then the default;
        #: each one's asset patterns as one regex (None: any asset), and per message key seen,
        #: the index of the route whose asset it names (-1: none).
        self._routes: list[_Route] = []
        self._route_assets = [asset_matcher(r.asset_patterns) for r in settings.routes] + [
            asset_matcher(settings.input.asset_patterns)
        ]
        self._key_routes: dict[bytes | None, int] = {}
        #: Scores batches (``model.workers`` at once; on CPU by default one single-threaded
        #: ONNX Runtime run per core) while the event loop prepares the next.
        self._scoring_thread: ThreadPoolExecutor | None = None
        #: Whether start() set SWITCH_INTERVAL_S (the last service to stop restores Python's).
        self._switching = False
        #: Held while a batch is processed and committed, and by rebalance callbacks.
        self._batch_lock = asyncio.Lock()
        #: From a revocation until the next assignment (rebalance callbacks).
        self._reassigning = False
        #: What the batches handled since the last commit produced, once all their windows
        #: were detected (None: nothing).
        self._open: _Outgoing | None = None
        #: Batches handled (or being handled) with windows not yet detected, oldest first.
        #: Their commit waits for those windows; the batches before them need not: see
        #: _batch_detected.
        self._unfinished: deque[_Outgoing] = deque()
        #: Windows handed to the scoring threads and not yet detected, oldest first. A batch
        #: leaves its last jobs here, scored while the next batch is fetched, decoded and
        #: windowed; they are detected before that batch's first, before a handover, or as
        #: soon as no records are waiting (see run()).
        self._scoring: deque[_Scoring] = deque()
        #: Per assigned partition: the last commit known to have succeeded, (offset, metadata).
        self._last_commit: dict[TopicPartition, tuple[int, str]] = {}
        #: Per partition: commit without alert state until then (it did not fit); last warning.
        self._bare_commits_until: dict[TopicPartition, float] = {}
        self._bare_commit_warned: dict[TopicPartition, float] = {}
        #: Silent assets are expired this often (windows.idle_timeout_s; never without it).
        idle = settings.windows.idle_timeout_s
        self._expiry_period_s = math.inf if idle is None else max(idle, 1.0)
        self._next_expiry = time.monotonic() + self._expiry_period_s
        #: Readings refused by windows.max_assets since the last warning; when the next may be.
        self._refused = 0
        self._next_cap_warning = -math.inf

    def _manager(self, path: Path, route: str) -> ModelManager:
        m = self.settings.model
        return ModelManager(
            path,
            device=m.device,
            threads=m.threads,
            workers=m.workers,
            io_binding={"auto": None, "on": True, "off": False}[m.io_binding],
            metrics=self.metrics,
            trusted_keys=m.trusted_keys,
            route=route,
        )

    @property
    def pipeline(self) -> _Route:
        """The default route (``model.path``'s)."""
        if not self._routes:
            raise RuntimeError("service not started")
        return self._routes[-1]

    @property
    def routes(self) -> Sequence[_Route]:
        """Every route, in the order they claim assets (the default last)."""
        return self._routes

    def request_reload(self) -> None:
        """Reload every route's bundle now (SIGHUP)."""
        for route in self._routes:
            route.models.request_reload()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        extra = s.routes
        # An asset goes to the first route whose patterns match it, the default route last; each
        # route's decoder sets the others' assets aside as another's.
        default_patterns = s.input.asset_patterns or ("*",)
        for i, r in enumerate(extra):
            later = [p for e in extra[i + 1 :] for p in e.asset_patterns]
            self._routes.append(
                await self._route(
                    r.name,
                    self._route_models[i],
                    r.detector or s.detector,
                    asset_patterns=r.asset_patterns,
                    claimed=tuple(p for e in extra[:i] for p in e.asset_patterns),
                    other=(*later, *default_patterns, *s.input.other_asset_patterns),
                )
            )
        self._routes.append(
            await self._route(
                DEFAULT_ROUTE,
                self.models,
                s.detector,
                asset_patterns=s.input.asset_patterns,
                claimed=tuple(p for e in extra for p in e.asset_patterns),
                other=s.input.other_asset_patterns,
            )
        )
        await self._start_clients()

    async def _route(
        self,
        name: str,
        models: ModelManager,
        d: DetectorSettings,
        *,
        asset_patterns: tuple[str, ...],
        claimed: tuple[str, ...],
        other: tuple[str, ...],
    ) -> _Route:
        s = self.settings
        model = await models.load()
        manifest = model.bundle.manifest
        where = "" if name == DEFAULT_ROUTE else f"routes {name}: "
        decoder = Decoder(
            DecoderConfig(
                features=manifest.features,
                format=s.input.format,
                asset_patterns=asset_patterns,
                other_asset_patterns=other,
                claimed_patterns=claimed,
                max_message_bytes=s.input.max_message_bytes,
                max_batch_readings=s.input.max_batch_readings,
                allow_extra_sensors=s.input.allow_extra_sensors,
            )
        )
        store = WindowStore(
            length=manifest.window.length,
            n_features=manifest.n_features,
            interval_ms=round(manifest.sampling_interval_s * 1000),
            max_gap_steps=s.windows.max_gap_steps,
            stride=s.windows.stride,
            max_assets=s.windows.max_assets,
            overflow=s.windows.overflow,
            idle_timeout_ms=(
                None if s.windows.idle_timeout_s is None else round(s.windows.idle_timeout_s * 1000)
            ),
        )
        k, n, m = d.resolved(manifest.window.length)
        logger.info(
            "%salert rule: open on %d of %d windows, resolve after %d quiet ones", where, k, n, m
        )
        # detector.hold: the sensor's place in the bundle's feature order is fixed (a reloaded
        # bundle must have the same features).
        hold = None
        if d.hold is not None:
            if d.hold.sensor not in manifest.features:
                raise ConfigError(
                    f"{where}detector.hold.sensor: {d.hold.sensor!r} is not a sensor of the "
                    f"bundle ({', '.join(manifest.features)})"
                )
            hold = (manifest.features.index(d.hold.sensor), d.hold.running_above)
            logger.info(
                "%salert hold: while %s <= %g and %g s after", where, d.hold.sensor,
                d.hold.running_above, d.hold.seconds,
            )  # fmt: skip
        detector = Detector(
            DetectorConfig(
                k=k,
                n=n,
                m=m,
                hysteresis=d.hysteresis,
                cooldown_ms=round(d.cooldown_s * 1000),
                hold_ms=0 if d.hold is None else round(d.hold.seconds * 1000),
                update_factor=d.update_factor,
                severity_bands=d.severity_bands,
                top_k=d.top_k,
            ),
            threshold=model.threshold,
            features=manifest.features,
            model=model.ref,
        )
        return _Route(name, models, decoder, store, detector, hold, model)

    async def _start_clients(self) -> None:
        s = self.settings
        self._ops = OpsServer(
            self.registry,
            host=s.http.host,
            port=s.http.port,
            readiness=self.readiness,
            liveness=self.alive,
        )
        await self._ops.start()
        kafka = client_kwargs(s.kafka)
        try:
            self._admin = AIOKafkaAdminClient(**kafka)
            await self._admin.start()
            await self._check_topics()
            self._producer = self._new_producer()
            await self._producer.start()
            self._consumer = AIOKafkaConsumer(
                **kafka,
                group_id=s.input.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level="read_committed",
                max_partition_fetch_bytes=max(1_048_576, s.input.max_message_bytes),
                fetch_max_wait_ms=s.input.fetch_max_wait_ms,
                # aiokafka's parsed records, not a ConsumerRecord each (monitor.kafka).
                key_deserializer=raw_records,
            )
            self._consumer.subscribe(list(s.input.topics), listener=_Rebalance(self))
            await self._consumer.start()
        except KafkaError as exc:
            await self.stop()
            raise await start_error(s.kafka, exc) from None
        if s.delivery.enabled and s.delivery.webhooks:
            self._notifier = Notifier(s, self.metrics)
            await self._notifier.start()
            self._tasks.append(asyncio.create_task(self._notifier.run(self._stop)))
        self._broker_ok = True
        self._started = True
        poll = s.model.reload == "watch"
        if s.model.reload != "off":
            for route in self._routes:
                watch = route.models.watch(s.model.reload_poll_s, poll=poll)
                self._tasks.append(asyncio.create_task(watch))
        self._tasks.append(asyncio.create_task(self._probe_broker()))
        # Everything alive now (modules, the model, clients) lives as long as the process: keep
        # it out of the garbage collector's full passes, which would otherwise traverse it all
        # and stall the data path (a 300 ms pause measured in the latency benchmark).
        gc.freeze()
        if not self._switching:
            self._switching = True
            if not _switching["services"]:
                _switching["before"] = sys.getswitchinterval()
                sys.setswitchinterval(SWITCH_INTERVAL_S)
            _switching["services"] += 1
        (logger.info if native.speedups is not None else logger.warning)(native.describe())
        if not (RAW_RECORDS and BATCH_DRAIN):
            logger.warning(
                "aiokafka %s: records come %s (its internals differ from those the fast path "
                "expects); JSON single readings are slower",
                aiokafka_version,
                "one by one" if RAW_RECORDS else "as ConsumerRecords",
            )
        logger.info(
            "consuming %s as group %s from %s",
            ", ".join(s.input.topics),
            s.input.group_id,
            s.kafka.bootstrap_servers,
        )

    async def run(self) -> None:
        """Consume until :meth:`request_stop`; then finish the batch in flight and return."""
        if not self._started:
            await self.start()
        self._loop_task = asyncio.current_task()
        assert self._consumer is not None
        s = self.settings.input
        while not self._stop.is_set():
            timeout_ms = s.fetch_timeout_ms
            if (since := self._open_since()) is not None:  # wake up in time to commit
                due_in = since + s.commit_interval_ms / 1000 - time.monotonic()
                timeout_ms = max(0, min(timeout_ms, math.ceil(due_in * 1000)))
            batch = await self._fetch(timeout_ms)
            async with self._batch_lock:
                if self._reassigning:
                    # Fetched under the old assignment, and a revocation ran while this loop
                    # waited for the records or for the lock: it forgot these partitions'
                    # windows, and aiokafka reports the old assignment until the new one is
                    # made (the partitions may even come back). Handled now, the records would
                    # start fresh windows and commit their offsets, and the next owner would
                    # resume after them: the windows ending there, which needed the readings
                    # before, would never be scored. Dropping them loses nothing: the new
                    # assignment reads every partition again from its commit. (Records that a
                    # getmany returns after the assignment come from the new positions.)
                    if batch:
                        logger.info(
                            "rebalancing: %d records fetched before it are read again after it",
                            sum(map(len, batch.values())),
                        )
                    batch = {}
                # Records fetched before a rebalance may belong to partitions revoked since.
                owned = self._consumer.assignment()
                batch = {tp: records for tp, records in batch.items() if tp in owned}
                try:
                    await self._flush_if_due()  # what was detected while waiting for these
                    if batch:
                        await self._process(batch)
                    await self._flush_if_due()
                except _NotCommittedError as exc:
                    await self._rewind(exc)
            self._update_lag()
        async with self._batch_lock:
            try:
                await self._flush_for_handover()
            except _NotCommittedError as exc:
                logger.warning("%s; read again from the last commit after a restart", exc)

    async def _fetch(self, timeout_ms: int) -> dict[TopicPartition, list[Record]]:
        """The next batch of records. While windows of the last batch are being scored, the
        records already fetched are taken without waiting; if there are none, those windows are
        detected first, so that waiting for new records never delays their alerts."""
        assert self._consumer is not None
        max_records = self.settings.input.fetch_max_records
        batch: dict[TopicPartition, list[Record]]
        if self._scoring:
            batch = await self._consumer.getmany(timeout_ms=0, max_records=max_records)
            if batch:
                return batch
            async with self._batch_lock:
                # Batches before the last are committed on the way if due (see
                # _batch_detected); the last one is left to the run loop. A failed commit
                # rewinds here, under the same lock, as it does in the run loop.
                try:
                    await self._detect_scored(commit=True)
                except _NotCommittedError as exc:
                    await self._rewind(exc)
                    return {}
        batch = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return batch

    def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        instance = s.instance_id or socket.gethostname()
        return AIOKafkaProducer(
            **client_kwargs(s.kafka),
            acks="all",
            enable_idempotence=True,
            transactional_id=f"plantwatch-{s.input.group_id}-{instance}",
            transaction_timeout_ms=s.kafka.transaction_timeout_ms,
            linger_ms=5,
        )

    async def _rewind(self, cause: BaseException) -> None:
        """Recover from a batch whose transaction failed, without a restart.

        The batch's effects were aborted, but the windows and alert state already moved on. So,
        as after a restart: a fresh producer with the same transactional id (fencing the old
        one and aborting whatever it left open), then every assigned partition forgets its
        state, restores it from the last commit and is re-read from the committed offset.
        Retries until it succeeds or a stop is requested.
        """
        logger.warning("batch not committed (%s); rewinding to the last commit", cause)
        self._open = None
        self._abandon_scoring()
        self.metrics.batch_rewinds.inc()
        assert self._consumer is not None
        delay = 0.5
        while not self._stop.is_set():
            try:
                if self._producer is not None:
                    producer, self._producer = self._producer, None
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(PROBE_INTERVAL_S):
                            await producer.stop()
                self._producer = self._new_producer()
                await self._producer.start()
                assigned = sorted(self._consumer.assignment())
                self._revoke(assigned)
                restored = await self._assign(assigned)
                committed = await self._admin_offsets([tp for tp in assigned if tp not in restored])
                for tp in assigned:
                    if tp in restored:
                        continue  # already at the commit it was restored from
                    if tp in committed:
                        self._consumer.seek(tp, committed[tp])
                    else:
                        await self._consumer.seek_to_beginning(tp)
                logger.info("rewound %d partition(s) to their last commit", len(assigned))
                return
            except KafkaError as exc:
                logger.warning("rewind failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, PROBE_INTERVAL_S)

    async def _admin_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        assert self._admin is not None
        if not tps:
            return {}
        committed = await self._admin.list_consumer_group_offsets(
            self.settings.input.group_id, partitions=tps
        )
        return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}

    async def _check_topics(self) -> None:
        """Refuse to start without the topics the service writes to or reads from.

        Without this a missing alerts topic shows up only as endless producer retries.
        """
        assert self._admin is not None
        s = self.settings
        needed = {*s.input.topics, s.alerts.topic, s.input.dead_letter_topic}
        if s.scores.topic:
            needed.add(s.scores.topic)
        if s.delivery.enabled and s.delivery.webhooks:
            needed.add(s.delivery.dead_letter_topic)
        missing = sorted(needed - set(await self._admin.list_topics()))
        if missing:
            raise ConfigError(
                f"Kafka at {s.kafka.bootstrap_servers} has no topic {', '.join(missing)}; "
                "create it (plantwatch does not create topics)"
            )

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop after the batch in flight (signal-safe)."""
        self._stop.set()

    async def stop(self) -> None:
        """Release everything, in reverse order of start. Idempotent."""
        self._started = False
        self._stop.set()
        if self._switching:
            self._switching = False
            _switching["services"] -= 1
            if not _switching["services"]:
                sys.setswitchinterval(_switching["before"])
        loop_task = self._loop_task
        if loop_task is not None and loop_task is not asyncio.current_task():
            # Let run() finish the batch in flight and commit before the clients close.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                async with asyncio.timeout(self.settings.shutdown_deadline_s):
                    await asyncio.shield(loop_task)
        if self._notifier is not None:
            # Let delivery finish the event in flight and commit (bounded by its own deadline).
            notifier, self._notifier = self._notifier, None
            await notifier.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()
        if self._ops is not None:
            ops, self._ops = self._ops, None
            await ops.stop()
        if self._scoring_thread is not None:
            thread, self._scoring_thread = self._scoring_thread, None
            thread.shutdown(wait=False)

    # --- health ------------------------------------------------------------------------------

    def readiness(self) -> Mapping[str, bool]:
        assigned = bool(self._consumer is not None and self._consumer.assignment())
        checks = {
            "model_loaded": all(r.models.loaded for r in self._routes) and bool(self._routes),
            "partitions_assigned": assigned,
            "broker_reachable": self._broker_ok,
        }
        self.metrics.ready.set(1 if all(checks.values()) else 0)
        return checks

    def alive(self) -> bool:
        task = self._loop_task
        return task is None or not task.done() or self._stop.is_set()

    @property
    def ops_url(self) -> str | None:
        return self._ops.url if self._ops is not None else None

    async def _probe_broker(self) -> None:
        while True:
            assert self._consumer is not None
            try:
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that comes as
                # the call completes, and the probe went on looping while stop() waited for it
                # past the shutdown deadline (tests/integration/test_scaleout.py, session 19).
                async with asyncio.timeout(PROBE_INTERVAL_S):
                    await self._consumer.topics()
                ok = True
            except (KafkaError, TimeoutError):
                ok = False
            if ok != self._broker_ok:
                level = logging.INFO if ok else logging.WARNING
                logger.log(level, "broker %s", "reachable again" if ok else "unreachable")
            self._broker_ok = ok
            self.readiness()
            await asyncio.sleep(PROBE_INTERVAL_S)

    # --- rebalancing -------------------------------------------------------------------------

    def _revoke(self, revoked: list[TopicPartition]) -> None:
        # Called with nothing left to commit (flushed, or dropped by a rewind).
        for tp in revoked:
            assets = self._partition_assets.pop(tp, set())
            for route in self._routes:
                route.detector.forget(assets)
                route.store.forget_partition(self._slot(tp))
            self.metrics.forget_assets(assets)
            self._replay_through.pop(tp, None)
            self._position.pop(tp, None)
            self._bare_commits_until.pop(tp, None)
            self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))
        if revoked:
            logger.info("partitions revoked: %s", _tps(revoked))

    async def _flush_for_handover(self) -> None:
        """:meth:`_flush`, then wait until the partitions it committed show that commit to
        whoever reads the group's offsets next (before a revocation or a stop hands them
        over): see :meth:`_await_visible`."""
        await self._await_visible(await self._flush())

    async def _await_visible(self, tps: list[TopicPartition]) -> None:
        """Wait until the group's offsets show this process's last commit of ``tps``.

        A transaction's offsets reach OffsetFetch only once its commit marker is written, after
        the producer's commit returned; a Kafka 2.3 broker answers the next owner with the
        commit before (no KIP-447 ``require_stable``), and if there was none, the next owner
        reads the partition from the start and scores its windows again (seen once in 11 runs
        of tests/integration/test_commit_interval.py). Handing the partitions over (a
        revocation, a stop) only once the commit shows closes that gap; after
        COMMIT_VISIBLE_WAIT_S it is left to chance, with a warning.
        """
        if not tps or self._admin is None:
            return
        group = self.settings.input.group_id
        started = time.monotonic()
        deadline = started + COMMIT_VISIBLE_WAIT_S
        pending = tps
        asked = 0
        while True:
            asked += 1
            try:
                # Bounded too: an answer the coordinator holds back (it may be rebalancing the
                # group) must not hold the handover, or a stop, past the wait.
                async with asyncio.timeout(max(deadline - time.monotonic(), COMMIT_VISIBLE_POLL_S)):
                    fetched = await self._admin.list_consumer_group_offsets(
                        group, partitions=pending
                    )
            except KafkaError as exc:
                logger.warning("could not check that the commit before the handover shows: %r", exc)
                return
            except TimeoutError:
                fetched = {}
            pending = [
                tp
                for tp in pending
                if (meta := fetched.get(tp)) is None
                or (meta.offset, meta.metadata) != self._last_commit.get(tp)
            ]
            if not pending:
                if asked > 1:  # the race this wait is for: worth a line when it happens
                    logger.info(
                        "the commit of %s showed in group %r after %.0f ms (%d fetches)",
                        _tps(tps),
                        group,
                        (time.monotonic() - started) * 1000,
                        asked,
                    )
                return
            if time.monotonic() >= deadline:
                logger.warning(
                    "the commit of %s does not show in group %r after %.0f s; their next owner "
                    "may read them again from an older commit",
                    _tps(pending),
                    group,
                    COMMIT_VISIBLE_WAIT_S,
                )
                return
            await asyncio.sleep(COMMIT_VISIBLE_POLL_S)

    async def _assign(self, assigned: list[TopicPartition]) -> set[TopicPartition]:
        """Restore the assigned partitions from their last commits; return those restored.

        Per partition the newer (by ``scored_through``) of the group coordinator's commit and
        the last one this process made itself: a Kafka 2.3 broker answers OffsetFetch with the
        last *materialised* commit, which around a broker restart can still lack a transaction
        that did commit (its markers pending) -- that batch would be scored and counted again
        (seen in tests/integration/test_faults.py).
        """
        assert self._admin is not None
        if not assigned:
            return set()
        fetched = await self._admin.list_consumer_group_offsets(
            self.settings.input.group_id, partitions=list(assigned)
        )
        restored: set[TopicPartition] = set()
        for tp in assigned:
            meta = fetched.get(tp)
            offset, metadata = (meta.offset, meta.metadata) if meta is not None else (-1, "")
            state = offsets.decode(metadata)
            own = self._last_commit.get(tp)
            own_state = offsets.decode(own[1]) if own is not None else None
            source = "group"
            if (
                own is not None
                and own_state is not None
                and (state is None or own_state.scored_through > state.scored_through)
            ):
                (offset, metadata), state, source = own, own_state, "own"
            if state is None:
                continue
            logger.info(
                "%s resumes at offset %d, scored through %d (%s commit)",
                tp,
                offset,
                state.scored_through,
                source,
            )
            # Read from the offset of the very commit whose metadata is used, not from
            # wherever the consumer's own position ends up (records fetched before the
            # rebalance must not skip part of the replay).
            if self._consumer is not None and offset >= 0:
                self._consumer.seek(tp, offset)
                self._last_commit[tp] = (offset, metadata)
                restored.add(tp)
            self._replay_through[tp] = state.scored_through
            snapshots = dict(state.routes or {})
            snapshots[DEFAULT_ROUTE] = state.detector or {}
            for route in self._routes:
                try:
                    route.detector.restore(snapshots.get(route.name) or {})
                except DataError as exc:
                    # E.g. detector.n changed since the commit: alerts open then start over.
                    logger.warning(
                        "%s: alert state of route %s not restored (%s)", tp, route.name, exc
                    )
        logger.info(
            "partitions assigned: %s (%d resume mid-stream)",
            _tps(assigned),
            len(self._replay_through),
        )
        return restored

    # --- the data path -----------------------------------------------------------------------

    async def _process(self, batch: Mapping[TopicPartition, list[Record]]) -> None:
        out = _Outgoing()
        self._unfinished.append(out)
        m = self.metrics
        # Counted locally and added to the metrics once per batch, not once per record.
        tally = _Tally()
        last_offset: dict[TopicPartition, int] = {}
        # Windows are scored in the worker thread while the loop goes on (see _submit); the
        # last jobs stay there, scored while the next batch is fetched.
        try:
            for tp, records in batch.items():
                await self._append_partition(tp, records, out, tally)
                last_offset[tp] = records[-1].offset
                for route in self._routes:
                    if route.store.pending >= OVERLAP_WINDOWS:
                        await self._submit(route, route.store.collect(), out)
            for route in self._routes:
                if route.store.pending:
                    await self._submit(route, route.store.collect(), out)
        except BaseException:
            self._abandon_scoring()
            raise
        outcomes = (
            ("ok", tally.ok),
            ("invalid", tally.invalid),
            ("other_asset", tally.other_assets),
            *tally.rejected.items(),
        )
        for outcome, count in outcomes:
            out.count(m.readings.labels(outcome), count)
        for kind, count in (("carried_forward", tally.carried), ("window_reset", tally.resets)):
            out.count(m.data_quality.labels(kind), count)
        if tally.rejected["asset_limit"]:
            self._warn_refused(tally.rejected["asset_limit"])
        # Counted once committed: "consumed" means fully handled.
        for tp, records in batch.items():
            out.count(m.messages.labels(tp.topic), len(records))
        out.last_offset.update(last_offset)
        self._observe_stages(out)
        if time.monotonic() >= self._next_expiry:
            self._expire_idle()
        m.tracked_assets.set(sum(len(route.store) for route in self._routes))
        out.handled = True
        await self._batch_detected()
        if self._unfinished and self._commit_due():
            # Its last windows are still being scored; it is committed once they are
            # detected, while the next batch is handled (see _batch_detected).
            out.needed = self._min_needed_offsets()

    async def _append_partition(
        self,
        tp: TopicPartition,
        records: list[Record],
        out: _Outgoing,
        tally: _Tally,
    ) -> None:
        """Decode a partition's records and append their readings to the window stores, a
        chunk at a time; hand each chunk's worth of ready windows to the scoring thread."""
        replay_through = self._replay_through.get(tp, -1)
        slot = self._slot(tp)
        with out.timed("decode"):
            decoded = self._decode([r.key for r in records], [r.value for r in records])
            record_offsets = np.fromiter((r.offset for r in records), np.int64, len(records))
        # Offsets increase within a partition: the replayed records are a prefix.
        n_replay = int(np.searchsorted(record_offsets, replay_through, side="right"))
        for route, batch in zip(self._routes, decoded, strict=True):
            await self._append_route(
                route, tp, records, batch, record_offsets, n_replay, slot, out, tally
            )

    def _decode(self, keys: list[bytes | None], values: list[bytes | None]) -> list[DecodedBatch]:
        """Each route's readings of these messages. A message keyed by a route's asset goes to
        that route's decoder alone; the others (unkeyed, or keyed by no route's asset) go to
        every route's, each taking its own assets' readings. A message no route takes is
        refused once, in the first route's batch: as another service's if every route that saw
        it says so, else with the first reason that is not about another's asset (an unkeyed
        batch of one route's assets with a bad value: that route's reason), if any."""
        routes = self._routes
        if len(routes) == 1:
            return [routes[0].decoder.decode_many(keys, values)]
        owner = self._owners(keys)
        n = len(keys)
        decoded: list[DecodedBatch] = []
        refused: dict[int, list[Rejection]] = defaultdict(list)
        for r, route in enumerate(routes):
            mine = np.flatnonzero((owner == r) | (owner < 0))
            if mine.size == n:
                batch = route.decoder.decode_many(keys, values)
            else:
                picked = mine.tolist()
                part = route.decoder.decode_many(
                    [keys[i] for i in picked], [values[i] for i in picked]
                )
                batch = DecodedBatch(
                    part.assets,
                    part.ts_ms,
                    part.values,
                    mine[part.messages],
                    [(picked[i], rejection) for i, rejection in part.rejections],
                )
            for i, rejection in batch.rejections:
                refused[i].append(rejection)
            decoded.append(batch)
        # The first route's own reason if some route has one, before "another's asset".
        merged = [
            (i, min(rejections, key=lambda r: (r.other_asset, r.names_other)))
            for i, rejections in sorted(refused.items())
            if len(rejections) == (1 if owner[i] >= 0 else len(routes))
        ]
        return [replace(decoded[0], rejections=merged)] + [
            replace(batch, rejections=[]) for batch in decoded[1:]
        ]

    def _owners(self, keys: list[bytes | None]) -> npt.NDArray[np.intp]:
        """Per message, the index of the route its key's asset belongs to, or -1 (unkeyed, or
        keyed by no route's asset: every route decodes it)."""
        cache = self._key_routes
        owner = np.fromiter(map(cache.get, keys, itertools.repeat(-2)), np.intp, len(keys))
        for i in np.flatnonzero(owner == -2).tolist():
            key = keys[i]
            if len(cache) >= KEY_ROUTE_CACHE:
                cache.clear()  # bounded against floods of distinct keys
            owner[i] = cache[key] = self._key_route(key)
        return owner

    def _key_route(self, key: bytes | None) -> int:
        if not key:
            return -1
        try:
            asset = key.decode("utf-8")
        except UnicodeDecodeError:
            return -1
        for r, matcher in enumerate(self._route_assets):
            if matcher is None or matcher.match(asset) is not None:
                return r
        return -1

    async def _append_route(
        self,
        p: _Route,
        tp: TopicPartition,
        records: list[Record],
        decoded: DecodedBatch,
        record_offsets: npt.NDArray[np.int64],
        n_replay: int,
        slot: int,
        out: _Outgoing,
        tally: _Tally,
    ) -> None:
        """Append a route's readings of a partition's records (see _append_partition)."""
        reading_offsets = record_offsets[decoded.messages]
        for lo, hi in self._chunks(p, decoded, len(records)):
            ra, rb = np.searchsorted(decoded.messages, (lo, hi)).tolist()
            result = None
            if hi <= n_replay or lo >= n_replay:
                # All readings at once; declined if any would be rejected.
                with out.timed("windows"):
                    result = p.store.append_many(
                        decoded.assets[ra:rb],
                        decoded.ts_ms[ra:rb],
                        decoded.values[ra:rb],
                        reading_offsets[ra:rb],
                        slot,
                        replay=hi <= n_replay,
                    )
            if result is None:
                with out.timed("windows"):
                    self._append_each(p, out, tp, records, decoded, n_replay, slot, lo, hi, tally)
            else:
                self._partition_assets[tp].update(decoded.assets[ra:rb])
                if lo >= n_replay:
                    tally.ok += result.accepted
                    tally.carried += result.carried
                    tally.resets += result.resets
                    for i, rejection in decoded.rejections:
                        if lo <= i < hi:
                            self._refuse(out, tp, records[i], rejection, tally)
            # Scored whenever a chunk's worth is pending: memory stays bounded (a getmany of
            # batch messages can hold several 100,000 readings, a window each).
            if p.store.pending >= self._chunk_readings(p):
                await self._submit(p, p.store.collect(), out)

    def _observe_stages(self, out: _Outgoing) -> None:
        for stage, seconds in out.stages.items():
            self.metrics.batch_stage.labels(stage).observe(seconds)
        out.stages.clear()

    def _abandon_scoring(self) -> None:
        """Forget the windows being scored (their batches will be read again)."""
        for job in self._scoring:  # nobody awaits them now
            job.future.add_done_callback(_retrieve)
        self._scoring.clear()
        self._unfinished.clear()

    def _open_since(self) -> float | None:
        """When the oldest batch not yet committed was handled (None: there is none)."""
        if self._open is not None:
            return self._open.since
        return self._unfinished[0].since if self._unfinished else None

    def _commit_due(self) -> bool:
        since = self._open_since()
        interval = self.settings.input.commit_interval_ms / 1000
        return since is not None and time.monotonic() - since >= interval

    async def _batch_detected(self, *, commit: bool = True) -> None:
        """Move the batches whose windows are all detected to what is open; commit it if due.

        Called when a job has been detected and when a batch ends. Jobs are detected in batch
        order, so the detector's state is then that of the end of the last batch moved, as the
        commit metadata needs, although later batches' windows may be being scored: those go
        on in the scoring threads during the transaction. The window store has moved on with
        the next batch's readings, so the commit uses what it needed at the end of the last
        batch moved (taken then when a commit was due; without it the commit waits).
        """
        per_batch = self.settings.input.commit_interval_ms == 0
        moved = False
        while self._unfinished and self._unfinished[0].handled and not self._unfinished[0].jobs:
            done = self._unfinished.popleft()
            if self._open is None:
                self._open = done
            else:
                self._open.merge(done)
            moved = True
            if commit and per_batch and self._committable_now():
                await self._commit_open()
        if commit and moved and self._committable_now() and self._commit_due():
            await self._commit_open()

    def _committable_now(self) -> bool:
        """Whether what is open can be committed from :meth:`_batch_detected`: later batches
        are still being scored (else the run loop commits) and the window store's needs at the
        end of the open batches are known."""
        return bool(self._unfinished) and self._open is not None and self._open.needed is not None

    async def _detect_scored(self, *, commit: bool) -> None:
        """Detect every job still with the scoring thread (before a commit, or before
        waiting for records); on failure forget them, their batches are read again.
        ``commit``: as :meth:`_drain`'s."""
        if not self._scoring:
            return
        stages = self._unfinished[-1]
        try:
            await self._drain(stages, keep=0, commit=commit)
        except BaseException:
            self._abandon_scoring()
            raise
        self._observe_stages(stages)

    async def _flush_if_due(self) -> None:
        """:meth:`_flush` when a commit is due and no windows are being scored. With windows
        still being scored, the batches before them are committed as soon as those are
        detected (_batch_detected), while the scoring threads go on: a drain here would leave
        them idle for the commit and the next fetch."""
        if self._commit_due() and not self._unfinished:
            await self._flush()

    async def _flush(self) -> list[TopicPartition]:
        """Commit the batches handled since the last commit, in one transaction: their alert
        events, scores and dead letters, each partition's offset and alert state; return the
        partitions committed. Raises :class:`_NotCommittedError` (the batches are then
        dropped, the caller rewinds)."""
        await self._detect_scored(commit=False)  # one transaction, whose partitions it returns
        return await self._commit_open()

    async def _commit_open(self) -> list[TopicPartition]:
        """Commit what is open (see :meth:`_flush`; its windows were all detected)."""
        out, self._open = self._open, None
        if out is None:
            return []
        t0 = time.perf_counter()
        await self._commit(out, out.last_offset)
        self.metrics.batch_stage.labels("commit").observe(time.perf_counter() - t0)
        for counter, amount in out.counts:
            counter.inc(amount)
        for tp, offset in out.last_offset.items():
            self._position[tp] = offset + 1
            if self._replay_through.get(tp, -1) <= offset:
                self._replay_through.pop(tp, None)
        return list(out.last_offset)

    def _warn_refused(self, readings: int) -> None:
        """Say, at most every CAP_WARN_S, that the asset cap refuses live readings: otherwise
        only a dead-letter reason and a counter label show that a plant outgrew it."""
        self._refused += readings
        now = time.monotonic()
        if now < self._next_cap_warning:
            return
        w = self.settings.windows
        since = "" if self._next_cap_warning == -math.inf else " since the last such warning"
        logger.warning(
            "windows.max_assets (%d) reached: %d readings of new assets refused%s, "
            "dead-lettered as asset_limit; raise windows.max_assets%s",
            w.max_assets,
            self._refused,
            since,
            " or set windows.overflow: evict_idle" if w.overflow == "reject" else "",
        )
        self._refused = 0
        self._next_cap_warning = now + CAP_WARN_S

    def _expire_idle(self) -> None:
        """Drop assets silent for ``windows.idle_timeout_s`` (see WindowStore.expire_idle):
        one-off and decommissioned ids would otherwise hold memory, ``max_assets`` places and
        per-batch work for ever. An asset with an open alert keeps its detector state (and
        its place in the commit metadata)."""
        self._next_expiry = time.monotonic() + self._expiry_period_s
        gone: list[str] = []
        dropped: list[str] = []
        for route in self._routes:
            expired = route.store.expire_idle()
            gone.extend(expired)
            dropped.extend(a for a in expired if not route.detector.has_state(a))
        if not gone:
            return
        self.metrics.data_quality.labels("asset_expired").inc(len(gone))
        for assets in self._partition_assets.values():
            assets.difference_update(dropped)
        self.metrics.forget_assets(dropped)
        logger.info("%d silent assets no longer tracked (%.0f s)", len(gone), self._expiry_period_s)

    @staticmethod
    def _chunk_readings(route: _Route) -> int:
        store = route.store
        return max(MIN_CHUNK_READINGS, CHUNK_BYTES // (store.length * store.n_features * 4))

    def _chunks(
        self, route: _Route, decoded: DecodedBatch, n_messages: int
    ) -> list[tuple[int, int]]:
        """Message ranges of a partition's batch holding about CHUNK_BYTES of windows each."""
        limit = self._chunk_readings(route)
        if len(decoded) <= limit:
            return [(0, n_messages)]
        cuts = [0, *np.unique(decoded.messages[limit::limit]).tolist(), n_messages]
        return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]

    def _append_each(
        self,
        p: _Route,
        out: _Outgoing,
        tp: TopicPartition,
        records: list[Record],
        decoded: DecodedBatch,
        n_replay: int,
        slot: int,
        lo: int,
        hi: int,
        tally: _Tally,
    ) -> None:
        """Append a partition's batch message by message (when some reading is rejected, or
        the batch straddles the end of a replay): each message with rejected readings is
        dead-lettered. Messages ``lo`` to ``hi`` (excluded) of ``records``; counted in
        ``tally``."""
        assets = self._partition_assets[tp]
        rejections = dict(decoded.rejections)
        # Most messages carry one reading; the store copies offsets, so one array serves all.
        one = np.empty(1, dtype=np.int64)
        for i in range(lo, hi):
            record = records[i]
            replay = i < n_replay
            rejection = rejections.get(i)
            if rejection is not None:
                if not replay:
                    self._refuse(out, tp, record, rejection, tally)
                continue
            rejected: Counter[WindowReject] | None = None
            for block in decoded.blocks(i):
                n = len(block.ts_ms)
                if n == 1:
                    one[0] = record.offset
                    offsets_ = one
                else:
                    offsets_ = np.full(n, record.offset, dtype=np.int64)
                result = p.store.append(
                    block.asset, block.ts_ms, block.values, offsets_, slot, replay=replay
                )
                assets.add(block.asset)
                if result.rejected:
                    rejected = rejected or Counter()
                    rejected.update(result.reasons())
                if not replay:
                    tally.ok += result.accepted
                    tally.carried += result.carried
                    tally.resets += result.resets
            if rejected and not replay:
                for reason, count in rejected.items():
                    tally.rejected[_READING_RESULT.get(reason, reason)] += count
                detail = ", ".join(f"{count} {reason}" for reason, count in rejected.items())
                self._dead_letter(
                    out, tp, record, next(iter(rejected)), f"readings rejected: {detail}"
                )

    async def _submit(self, route: _Route, ready: ReadyBatch, out: _Outgoing) -> None:
        """Hand ready windows to the scoring thread; then detect what was handed over before
        them, all but the last SCORING_AHEAD jobs, so that windows are scored while the loop
        prepares the next (ONNX Runtime releases the GIL). Events come in the order of the
        windows either way."""
        # Windows that end at a reading scored before the restart only rebuild state.
        keep = np.ones(len(ready), dtype=bool)
        if self._replay_through:
            for tp, through in self._replay_through.items():
                keep &= ~((ready.partitions == self._slot(tp)) & (ready.offsets <= through))
        idx = np.flatnonzero(keep)
        if idx.size:
            whole = idx.size == len(ready)
            model = route.models.current
            if self._scoring_thread is None:
                self._scoring_thread = ThreadPoolExecutor(
                    self.models.workers, thread_name_prefix="plantwatch-score"
                )
            future = asyncio.get_running_loop().run_in_executor(
                self._scoring_thread,
                self._score_windows,
                model,
                ready.windows if whole else ready.windows[idx],
            )
            assets = ready.assets if whole else [ready.assets[i] for i in idx]
            held = None
            if route.hold is not None:
                held = held_windows(ready.windows if whole else ready.windows[idx], *route.hold)
            job = _Scoring(assets, ready.ts_ms[idx], route, model, out, future, held)
            self._scoring.append(job)
            out.jobs += 1
        routes = min(len(self._routes), ROUTES_AHEAD)
        await self._drain(out, keep=(SCORING_AHEAD + self.models.workers - 1) * routes)

    def _score_windows(
        self, model: LoadedModel, windows: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], float]:
        """Score in chunks of the scorer's ``max_batch`` (in a scoring thread)."""
        m = self.metrics
        scores = np.empty(len(windows), dtype=np.float32)
        errors = np.empty((len(windows), model.bundle.manifest.n_features), dtype=np.float32)
        total = 0.0
        step = model.scorer.max_batch
        for start in range(0, len(windows), step):
            chunk = windows[start : start + step]
            t0 = time.perf_counter()
            result = model.scorer.score(chunk)
            took = time.perf_counter() - t0
            total += took
            m.scoring_latency.observe(took)
            m.scoring_batch_size.observe(len(chunk))
            scores[start : start + len(chunk)] = result.score
            errors[start : start + len(chunk)] = result.sensor_error
        return scores, errors, total

    async def _drain(self, out: _Outgoing, *, keep: int, commit: bool = True) -> None:
        """Detect on scored windows, oldest first, until at most ``keep`` are being scored;
        each batch whose windows are all detected is committed if due (and ``commit``). The
        time spent goes to ``out``'s stages."""
        scoring = self._scoring
        while len(scoring) > keep:
            job = scoring[0]
            t0 = time.perf_counter()
            scores, errors, took = await job.future
            out.stages["score_wait"] += time.perf_counter() - t0
            scoring.popleft()
            out.stages["score"] += took
            job.out.count(self.metrics.windows_scored, len(job.assets))
            route = job.route
            if job.model is not route.model_in_use:
                manifest = job.model.bundle.manifest
                route.detector.set_model(
                    threshold=job.model.threshold, model=job.model.ref, features=manifest.features
                )
                route.model_in_use = job.model
            with out.timed("detect"):
                self._detect(route, job.assets, job.ts_ms, scores, errors, job.out, job.held)
            job.out.jobs -= 1
            if not job.out.jobs:
                await self._batch_detected(commit=commit)

    def _detect(
        self,
        route: _Route,
        assets: list[str],
        ts_ms: npt.NDArray[np.int64],
        scores: npt.NDArray[np.float32],
        errors: npt.NDArray[np.float32],
        out: _Outgoing,
        held: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        m = self.metrics
        detector = route.detector
        # An even sample of the batch keeps the histogram's percentiles at a bounded cost.
        now_ms = time.time() * 1000.0
        sample = ts_ms[:: max(1, len(ts_ms) // LATENCY_SAMPLES)]
        for lag_ms in (now_ms - sample).tolist():
            m.end_to_end_latency.observe(max(lag_ms, 0.0) / 1000.0)
        m.set_asset_scores(dict(zip(assets, scores.tolist(), strict=True)), route.name)
        if self.settings.scores.topic:
            out.scores.extend(_score_messages(assets, ts_ms, scores))

        if held is not None:
            out.count(m.windows_held, int(np.count_nonzero(held)))
        events = detector.observe(assets, ts_ms, scores, errors, held)
        for event in events:
            out.count(m.alert_events.labels(event.event.value, event.severity.value))
            logger.info(
                "alert %s %s asset=%s score=%.4g peak=%.4g severity=%s top=%s",
                event.alert_id,
                event.event.value,
                event.asset,
                event.score,
                event.peak_score,
                event.severity.value,
                ",".join(f"{s.sensor}:{s.share:.0%}" for s in event.top_sensors),
            )
        m.open_alerts.set(sum(r.detector.open_alerts() for r in self._routes))
        out.alerts.extend(events)

    def _refuse(
        self,
        out: _Outgoing,
        tp: TopicPartition,
        record: Record,
        rejection: Rejection,
        tally: _Tally,
    ) -> None:
        """A message the decoder refused: dead-lettered with the reason, or, all for another
        service's asset (``input.other_asset_patterns``), only counted."""
        if rejection.other_asset:
            tally.other_assets += 1
            return
        tally.invalid += 1
        self._dead_letter(out, tp, record, rejection.reason.value, rejection.detail)

    def _dead_letter(
        self, out: _Outgoing, tp: TopicPartition, record: Record, reason: str, detail: str
    ) -> None:
        out.count(self.metrics.dead_letters.labels(reason))
        headers = [
            ("plantwatch.reason", reason.encode()),
            ("plantwatch.detail", detail.encode()[:1000]),
            ("plantwatch.topic", tp.topic.encode()),
            ("plantwatch.partition", str(tp.partition).encode()),
            ("plantwatch.offset", str(record.offset).encode()),
            ("plantwatch.timestamp", str(record.timestamp).encode()),
        ]
        out.dead_letters.append((record.key, record.value or b"", headers))

    async def _commit(self, out: _Outgoing, last_offset: Mapping[TopicPartition, int]) -> None:
        assert self._producer is not None
        s = self.settings
        needed = out.needed if out.needed is not None else self._min_needed_offsets()
        commits: dict[TopicPartition, tuple[int, str]] = {}
        for tp, last in last_offset.items():
            start = min(needed.get(self._slot(tp), last + 1), last + 1)
            through = max(last, self._replay_through.get(tp, -1))
            commits[tp] = (start, self._commit_metadata(tp, through))
        sent: list[asyncio.Future[object]] = []

        def track(future: asyncio.Future[object]) -> None:
            # If the batch fails, records still in flight fail later, one by one: their errors
            # are the batch's, handled once by the rewind ("exception never retrieved" else).
            future.add_done_callback(_retrieve)
            sent.append(future)

        try:
            async with self._producer.transaction():
                for event in out.alerts:
                    track(
                        await self._producer.send(
                            s.alerts.topic, event.to_json(), key=event.asset.encode()
                        )
                    )
                if s.scores.topic:
                    for asset, doc in out.scores:
                        track(await self._producer.send(s.scores.topic, doc, key=asset))
                for dl_key, dl_value, headers in out.dead_letters:
                    track(
                        await self._producer.send(
                            s.input.dead_letter_topic, dl_value, key=dl_key, headers=headers
                        )
                    )
                await self._producer.send_offsets_to_transaction(commits, s.input.group_id)
                # aiokafka commits a transaction even when some of its records failed (e.g.
                # OutOfOrderSequenceNumber after a broker restart): those would be lost while
                # the offsets move on. Every record must be acknowledged, else the transaction
                # aborts (found by tests/integration/test_faults.py).
                await asyncio.gather(*sent)
            self._last_commit.update(commits)
        except ProducerFenced as exc:
            raise KafkaUnavailableError(
                f"another instance with instance_id {s.instance_id!r} took over: {exc}"
            ) from exc
        except KafkaError as exc:
            raise _NotCommittedError(f"could not commit a batch transaction: {exc!r}") from exc

    def _min_needed_offsets(self) -> dict[int, int]:
        """Per partition slot, where a restart must read from to rebuild every route's windows."""
        needed: dict[int, int] = {}
        for route in self._routes:
            for slot, offset in route.store.min_needed_offsets().items():
                needed[slot] = min(offset, needed.get(slot, offset))
        return needed

    def _commit_metadata(self, tp: TopicPartition, through: int) -> str:
        """The fullest detector state that fits in Kafka's commit metadata limit."""
        assets = self._partition_assets.get(tp, set())
        limit = self.settings.kafka.offset_metadata_max_bytes
        now = time.monotonic()
        # After a miss, commit the bare offset for a while instead of snapshotting and
        # compressing every asset's state twice per batch only to find it still too large.
        if self._bare_commits_until.get(tp, 0.0) <= now:
            for history in (True, False):
                snapshots = {
                    route.name: snapshot
                    for route in self._routes
                    if (snapshot := route.detector.snapshot(assets, history=history))
                }
                state = offsets.CommitState(
                    through, detector=snapshots.pop(DEFAULT_ROUTE, None), routes=snapshots or None
                )
                text = offsets.encode(state, limit=limit)
                if text is not None:
                    if not history:
                        logger.debug("%s: k-of-n histories left out of the commit (too large)", tp)
                    self._bare_commits_until.pop(tp, None)
                    return text
            self._bare_commits_until[tp] = now + BARE_COMMIT_RETRY_S
            if now - self._bare_commit_warned.get(tp, -math.inf) >= BARE_COMMIT_WARN_S:
                # Once per partition and BARE_COMMIT_WARN_S, not per batch (23,500 lines an
                # hour in the soak run).
                self._bare_commit_warned[tp] = now
                logger.warning(
                    "%s: alert state of %d assets does not fit in %d bytes of commit metadata; "
                    "committing without it, so alerts open at a handover start over (raise "
                    "offset.metadata.max.bytes on the brokers and kafka.offset_metadata_max_bytes, "
                    "or use more partitions)",
                    tp,
                    len(assets),
                    limit,
                )
        text = offsets.encode(offsets.CommitState(through), limit=limit)
        assert text is not None  # a bare offset always fits
        return text

    def _slot(self, tp: TopicPartition) -> int:
        slot = self._slots.get(tp)
        if slot is None:
            slot = self._slots[tp] = len(self._slots)
        return slot

    def _update_lag(self) -> None:
        if self._consumer is None:
            return
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            position = self._position.get(tp)
            if high is not None and position is not None:
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(high - position, 0)
                )


class _NotCommittedError(KafkaUnavailableError):
    """A batch transaction failed and was aborted: the service rewinds to the last commit."""


#: Window-store rejection reasons as ``plantwatch_readings_total{result=...}``.
_READING_RESULT = {"out_of_order": "late", "duplicate_timestamp": "duplicate"}


def _score_messages(
    assets: list[str], ts_ms: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]
) -> list[tuple[bytes, bytes]]:
    """One ``{"asset", "ts", "score"}`` message per asset of a scored batch."""
    by_asset: dict[str, list[int]] = defaultdict(list)
    for i, asset in enumerate(assets):
        by_asset[asset].append(i)
    messages = []
    for asset, idx in by_asset.items():
        doc = {"asset": asset, "ts": ts_ms[idx].tolist(), "score": scores[idx].tolist()}
        messages.append((asset.encode(), json.dumps(doc, separators=(",", ":")).encode()))
    return messages


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _tps(tps: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps))


async def serve(settings: Settings, *, registry: CollectorRegistry | None = None) -> Service:
    """Start a service (tests and the CLI use this)."""
    service = Service(settings, registry=registry)
    try:
        await service.start()
    except PlantwatchError:
        await service.stop()
        raise
    return service
