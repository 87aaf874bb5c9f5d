"""The aiokafka adapter: client settings from configuration, and error translation.

Only this module and the components that own a consumer or producer touch aiokafka.
"""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Iterator
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    CorruptRecordException,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from monitor.config import KafkaSettings
from monitor.errors import KafkaAuthError, KafkaUnavailableError, PlantwatchError

_AUTH_ERRORS = (
    SaslAuthenticationFailed,
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    UnsupportedSaslMechanismError,
    IllegalSaslStateError,
)
#: Upper bound of the diagnostic connection made after a client failed to start.
_PROBE_TIMEOUT_MS = 10_000
#: How often clients refresh cluster metadata even when nothing failed. aiokafka's default (5 min)
#: is too slow here: when a broker restarts, the group can re-form while the broker is still
#: loading its topics; the member then holds *no* partitions, fetches nothing, hits no error
#: and so refreshes nothing until this age passes (found by tests/integration/test_faults.py).
METADATA_MAX_AGE_MS = 10_000


class Record(Protocol):
    """What the service reads of a consumed record (its topic and partition come with the
    batch): aiokafka's :class:`~aiokafka.ConsumerRecord`, or on the fast path the record
    object aiokafka parsed it into (see :data:`RAW_RECORDS`)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


def raw_records(key: bytes | None) -> bytes | None:
    """The key deserializer that marks a consumer whose records are aiokafka's own parsed
    record objects rather than :class:`~aiokafka.ConsumerRecord` (it returns the key as is,
    so without the fast path the records are ConsumerRecords with the same keys)."""
    return key


def _install_raw_records() -> bool:
    """Let consumers marked by :func:`raw_records` skip building a ConsumerRecord per record.

    aiokafka parses each record in C and then wraps it in a ConsumerRecord, a Python dataclass
    of eleven fields: with JSON single readings that wrapper cost more of the service's loop than
    parsing the reading (about a fifth of its samples, profiled: bench/results/performance.md,
    session 17). The service reads four of the fields, which aiokafka's record has too. Each
    batch of a marked consumer's partition records hands its records on as they are, through a
    C callable (no Python call per record); other consumers are untouched. If aiokafka's
    internals are not as expected (another version), nothing is changed and marked consumers
    get ConsumerRecords.
    """
    try:
        from aiokafka.consumer.fetcher import PartitionRecords
    except ImportError:
        return False
    init = PartitionRecords.__init__
    wrap = getattr(PartitionRecords, "_consumer_record", None)
    unpack = getattr(PartitionRecords, "_unpack_records", None)
    if (
        wrap is None
        or unpack is None
        or wrap.__code__.co_varnames[:3] != ("self", "tp", "record")
        or "_consumer_record" not in unpack.__code__.co_names
    ):
        return False
    if getattr(init, "plantwatch_raw", False):
        return True

    drain = _install_batch_drain(PartitionRecords)

    def init_raw(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if getattr(self, "_key_deserializer", None) is raw_records:
            # Called as self._consumer_record(tp, record): {}.get returns the record.
            self._consumer_record = _AS_PARSED
            if drain:
                # getone() takes records from the same batches as getmany() does.
                self._records_iterator = _one_at_a_time(self)

    init_raw.plantwatch_raw = True  # type: ignore[attr-defined]
    PartitionRecords.__init__ = init_raw
    return True


#: What :func:`_take` uses of aiokafka's ``PartitionRecords._unpack_records`` and
#: ``FetchResult.getall``: if either stops naming one of these, the batch drain stays off.
_UNPACK_NAMES: Final = frozenset(
    {
        "has_next",
        "next_batch",
        "validate_crc",
        "producer_id",
        "_consume_aborted_up_to",
        "is_control_batch",
        "_contains_abort_marker",
        "_aborted_producers",
        "is_transactional",
        "next_offset",
        "base_offset",
        "next_fetch_offset",
        "_check_crcs",
        "_isolation_level",
        "READ_COMMITTED",
    }
)
#: aiokafka's ``isolation_level="read_committed"`` in ``PartitionRecords`` (checked at install).
_READ_COMMITTED: Final = 1
_GETALL_NAMES: Final = frozenset(
    {"check_assignment", "has_more", "_partition_records", "_update_position"}
)


def _install_batch_drain(partition_records: Any) -> bool:
    """Let ``getmany`` hand a marked consumer's records over a record batch at a time.

    aiokafka yields records one by one from a Python generator (``_unpack_records``, behind
    ``PartitionRecords.__next__`` and ``FetchResult.getall``): three Python frames resumed per
    record, about a quarter of the service's loop with JSON single readings (profiled:
    bench/results/performance.md, session 18). For a marked consumer, :func:`_take` does what
    that generator does, batch by batch and in the same order (CRC check, aborted transactions
    and control batches under ``read_committed``, records before the fetch offset skipped), and
    takes each batch's records in one C call. Other consumers are untouched.
    """
    try:
        from aiokafka.consumer.fetcher import READ_COMMITTED, FetchResult
    except ImportError:
        return False
    if READ_COMMITTED != _READ_COMMITTED:
        return False
    getall = FetchResult.getall
    if getattr(getall, "plantwatch_raw", False):
        return True
    unpack = partition_records._unpack_records
    if not (
        set(unpack.__code__.co_names) >= _UNPACK_NAMES
        and set(getall.__code__.co_names) >= _GETALL_NAMES
        and hasattr(partition_records, "_consume_aborted_up_to")
        and hasattr(partition_records, "_contains_abort_marker")
    ):
        return False

    def getall_batches(self: Any, max_records: int | None = None) -> list[Any]:
        records = self._partition_records
        if records is None or records._consumer_record is not _AS_PARSED:
            plain: list[Any] = getall(self, max_records)
            return plain
        if not self.check_assignment(self._topic_partition) or not self.has_more():
            return []
        out = _take(records, max_records)
        self._update_position()
        if (
            records.plantwatch_pending is None
            and records.plantwatch_error is None
            and not records._records.has_next()
        ):
            self._partition_records = None
        return out

    getall_batches.plantwatch_raw = True  # type: ignore[attr-defined]
    FetchResult.getall = getall_batches
    return True


def _take(records: Any, max_records: int | None) -> list[Any]:
    """Up to ``max_records`` (all if None) of aiokafka ``PartitionRecords`` ``records``, as its
    ``_unpack_records`` would yield them, taken a record batch at a time; a batch taken in part
    waits in ``records.plantwatch_pending`` for the next call, and a CRC error after some
    records were taken is raised by the next call (``records.plantwatch_error``)."""
    error = getattr(records, "plantwatch_error", None)
    records.plantwatch_error = None
    if error is not None:
        raise error
    limit = sys.maxsize if max_records is None else max_records
    out: list[Any] = []
    pending = getattr(records, "plantwatch_pending", None)
    while len(out) < limit:
        if pending is not None:
            start = records.plantwatch_taken
            part = pending[start : start + limit - len(out)]
            out += part
            if start + len(part) < len(pending):
                records.plantwatch_taken = start + len(part)
                records.next_fetch_offset = part[-1].offset + 1
                break
            # Past the batch's last record (compaction may have removed some at its end).
            records.next_fetch_offset = records.plantwatch_next_offset
            pending = None
            continue
        source = records._records
        if not source.has_next():
            break
        batch = source.next_batch()
        if records._check_crcs and not batch.validate_crc():
            # As aiokafka's generator, done after the error: the rest is fetched again. Unlike
            # it, the records taken before the bad batch are returned; the error comes next.
            records._records = _EMPTY
            error = CorruptRecordException(f"Invalid CRC - {records._tp}")
            if not out:
                raise error
            records.plantwatch_error = error
            break
        if records._isolation_level == _READ_COMMITTED and batch.producer_id is not None:
            records._consume_aborted_up_to(batch.base_offset)
            if batch.is_control_batch and records._contains_abort_marker(batch):
                records._aborted_producers.discard(batch.producer_id)
            if batch.is_transactional and batch.producer_id in records._aborted_producers:
                records.next_fetch_offset = batch.next_offset
                continue
        if batch.is_control_batch:
            records.next_fetch_offset = batch.next_offset
            continue
        taken = list(batch)
        if taken and taken[0].offset < records.next_fetch_offset:
            # A compressed message set of the old formats can start before the fetch offset.
            first = records.next_fetch_offset
            taken = [r for r in taken if r.offset >= first]
        pending = taken
        records.plantwatch_taken = 0
        records.plantwatch_next_offset = batch.next_offset
    records.plantwatch_pending = pending
    return out


def _batch_drain_installed() -> bool:
    from aiokafka.consumer.fetcher import FetchResult

    return bool(getattr(FetchResult.getall, "plantwatch_raw", False))


def _one_at_a_time(records: Any) -> Iterator[Any]:
    while taken := _take(records, 1):
        yield taken[0]


class _Exhausted:
    """Stands in for a partition's record source once it has failed."""

    @staticmethod
    def has_next() -> bool:
        return False


_EMPTY: Final = _Exhausted()


#: ``(tp, record) -> record`` without a Python frame.
_AS_PARSED: Final[Any] = {}.get


#: Whether consumers marked by :func:`raw_records` get aiokafka's parsed records (else
#: ConsumerRecords, which read the same).
RAW_RECORDS: Final = _install_raw_records()
#: Whether their ``getmany`` also takes records a batch at a time (:func:`_install_batch_drain`).
BATCH_DRAIN: Final = RAW_RECORDS and _batch_drain_installed()


def client_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments shared by every aiokafka consumer, producer and admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
        "request_timeout_ms": settings.request_timeout_ms,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(settings)
    if settings.security_protocol.startswith("SASL"):
        # Completeness is validated in KafkaSettings.
        assert settings.sasl_password is not None
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return kwargs


def _ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    password = settings.ssl_password.get_secret_value() if settings.ssl_password else None
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None,
        certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        password=password,
    )
    return context


async def start_error(settings: KafkaSettings, exc: BaseException) -> PlantwatchError:
    """The one-line error for an aiokafka client that failed to start.

    aiokafka reports every failed bootstrap as "Unable to bootstrap from ..." and only logs the
    cause, so one direct connection to the first bootstrap server, with the same security
    settings, tells rejected credentials and failed TLS handshakes (not retriable: fail at
    start) from an unreachable cluster. Messages name the user and mechanism, never a secret.
    """
    where = settings.bootstrap_servers
    cause: BaseException | None = exc if isinstance(exc, _AUTH_ERRORS) else await _probe(settings)
    if isinstance(cause, _AUTH_ERRORS):
        reason = str(cause).split(": ", 1)[-1] or type(cause).__name__
        return KafkaAuthError(
            f"Kafka at {where} rejected user {settings.sasl_username!r} "
            f"({settings.sasl_mechanism} over {settings.security_protocol}): {reason}"
        )
    if isinstance(cause, ssl.SSLError):
        detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
        return KafkaAuthError(
            f"TLS handshake with Kafka at {where} failed ({settings.security_protocol}): {detail}"
        )
    return KafkaUnavailableError(f"cannot reach Kafka at {where}: {exc}")


async def _probe(settings: KafkaSettings) -> BaseException | None:
    """Open (and close) one connection to the first bootstrap server; the error, if any."""
    first = settings.bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    if not host or not port.isdigit():
        return None
    kwargs = client_kwargs(settings)
    for key in ("bootstrap_servers", "metadata_max_age_ms"):
        kwargs.pop(key)
    kwargs["request_timeout_ms"] = min(settings.request_timeout_ms, _PROBE_TIMEOUT_MS)
    try:
        conn = await create_conn(host.strip("[]"), int(port), **kwargs)
    except (KafkaError, OSError, TimeoutError) as exc:
        return exc
    conn.close()
    return None


async def read_topic(
    bootstrap: str, topic: str, *, idle_s: float = 1.5
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of ``topic`` from the start, read until nothing new arrives for
    ``idle_s`` (for tools and tests that check what the service wrote)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            batch = await consumer.getmany(timeout_ms=200)
            for part in batch.values():
                records.extend(part)
            if batch:
                quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return records
