"""Scoring in the worker thread overlaps the loop's next partition, and detection stays in order;
the warning when the asset cap refuses live readings (no Kafka needed: consumer, producer and
admin client are stand-ins, the model a stand-in that scores a window by its last reading)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError

from monitor import service as service_module
from monitor.config import Settings
from monitor.detector import Detector, DetectorConfig
from monitor.events import ModelRef
from monitor.scoring import Scores
from monitor.service import Service
from monitor.windows import WindowStore
from tests.stand_ins import GroupOffsets, json_record, route

FEATURES = ("a", "b")
PARTITIONS = [TopicPartition("readings", p) for p in range(3)]
T0 = 1_767_225_600_000
LENGTH = 4
STEPS = 7  # per asset: windows end at steps 3..6


def _record(tp: TopicPartition, offset: int, asset: str, step: int) -> ConsumerRecord[bytes, bytes]:
    # Sensor "a" carries the step, so a window's score (its last "a") names the window.
    return json_record(tp, offset, asset, T0 + step * 1000, [step, 0.0])


def _batch() -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    batch = {}
    for tp in PARTITIONS:
        assets = [f"p{tp.partition}-{i}" for i in range(2)]
        records = [
            _record(tp, 10 * step + i, asset, step)
            for step in range(STEPS)
            for i, asset in enumerate(assets)
        ]
        batch[tp] = records
    return batch


class _Consumer:
    def __init__(self, service: Service) -> None:
        self.service = service

    async def getmany(self, **_: Any) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.service.request_stop()  # one pass of the loop
        return _batch()

    def assignment(self) -> set[TopicPartition]:
        return set(PARTITIONS)

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    async def stop(self) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.offsets: list[dict[TopicPartition, tuple[int, str]]] = []

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, tuple[int, str]], group_id: str
    ) -> None:
        self.offsets.append(offsets)

    async def send(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("nothing is sent: no alerts, no scores topic")

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class _Scorer:
    """Scores a window by its last reading of sensor "a"; ``hold`` runs before each call."""

    max_batch = 8192

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.threads: set[int] = set()
        self.hold: Any = None
        self._lock = threading.Lock()

    def score(self, windows: npt.NDArray[np.float32]) -> Scores:
        with self._lock:
            self.threads.add(threading.get_ident())
            self.calls.append(len(windows))
            call = len(self.calls)
        if self.hold is not None:
            self.hold(call)
        return Scores(
            score=windows[:, -1, 0].copy(), sensor_error=np.ones((len(windows), 2), np.float32)
        )


def _service(
    tmp_path: Path, max_assets: int = 100_000, workers: int = 1, commit_interval_ms: int = 100
) -> tuple[Service, _Scorer, _Producer, list[tuple[str, int, float]]]:
    settings = {
        "model": {"path": str(tmp_path)},
        "windows": {"max_assets": max_assets},
        "input": {"commit_interval_ms": commit_interval_ms},
    }
    service = Service(Settings.model_validate(settings))
    detector = Detector(
        DetectorConfig(k=1, n=1, m=5),
        threshold=1000.0,  # no alerts: the scores are the steps
        features=FEATURES,
        model=ModelRef("m", "1", "0" * 64),
    )
    observed: list[tuple[str, int, float]] = []
    observe = detector.observe

    def recording(assets: Any, ts_ms: Any, scores: Any, errors: Any, held: Any = None) -> Any:
        observed.extend(zip(assets, ts_ms.tolist(), scores.tolist(), strict=True))
        return observe(assets, ts_ms, scores, errors, held)

    detector.observe = recording  # type: ignore[method-assign]
    scorer = _Scorer()
    manifest = SimpleNamespace(n_features=2, features=FEATURES)
    model = SimpleNamespace(
        scorer=scorer,
        bundle=SimpleNamespace(manifest=manifest),
        threshold=1000.0,
        ref=ModelRef("m", "1", "0" * 64),
    )
    service.models = SimpleNamespace(current=model, workers=workers)  # type: ignore[assignment]
    store = WindowStore(length=LENGTH, n_features=2, interval_ms=1000, max_assets=max_assets)
    service._routes = [route(service.models, store=store, detector=detector)]
    producer = _Producer()
    service._consumer = _Consumer(service)  # type: ignore[assignment]
    service._producer = producer  # type: ignore[assignment]
    service._admin = GroupOffsets(producer)  # type: ignore[assignment]
    service._started = True
    return service, scorer, producer, observed


def _tell_when_appended(service: Service, which: Any) -> threading.Event:
    """An event set once the window store has appended readings for which ``which(args)`` of
    ``append_many(*args)`` holds."""
    appended = threading.Event()
    store = service.pipeline.store
    append_many = store.append_many

    def append_and_tell(*args: Any, **kwargs: Any) -> Any:
        got = append_many(*args, **kwargs)
        if which(args):
            appended.set()
        return got

    store.append_many = append_and_tell  # type: ignore[method-assign]
    return appended


def _expected() -> list[tuple[str, int, float]]:
    """Every window, in the order of the batch: partition by partition, reading by reading."""
    return [
        (f"p{tp.partition}-{i}", T0 + step * 1000, float(step))
        for tp in PARTITIONS
        for step in range(LENGTH - 1, STEPS)
        for i in range(2)
    ]


async def test_every_window_is_detected_once_in_batch_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)  # hand over every partition
    service, scorer, producer, observed = _service(tmp_path)
    try:
        await service.run()
    finally:
        await service.stop()
    assert scorer.calls == [8, 8, 8]
    assert threading.get_ident() not in scorer.threads
    assert observed == _expected()
    assert [sorted(o) for o in producer.offsets] == [sorted(PARTITIONS)]


async def test_the_next_partition_is_prepared_while_the_last_one_is_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first scoring call waits until the loop has appended the second partition's
    # readings: it would wait in vain (and fail) if the loop waited for the scores first.
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, scorer, _, observed = _service(tmp_path)
    appended = _tell_when_appended(service, lambda args: args[4] == service._slot(PARTITIONS[1]))

    def hold(call: int) -> None:
        if call == 1 and not appended.wait(timeout=10):
            raise AssertionError("the loop waited for the scores before going on")

    scorer.hold = hold
    try:
        await service.run()
    finally:
        await service.stop()
    assert observed == _expected()


async def test_several_workers_score_jobs_at_once_and_detection_stays_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first job's scoring waits until the second job's has begun: with one worker it
    # would wait in vain. The second job finishes first; its windows are still detected after
    # the first job's.
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, scorer, _, observed = _service(tmp_path, workers=2)
    second_began = threading.Event()

    def hold(call: int) -> None:
        if call == 2:
            second_began.set()
        elif call == 1 and not second_began.wait(timeout=10):
            raise AssertionError("the second job was not scored beside the first")

    scorer.hold = hold
    try:
        await service.run()
    finally:
        await service.stop()
    assert len(scorer.threads) == 2
    assert observed == _expected()


async def test_jobs_are_scored_in_runs_of_the_scorers_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, scorer, _, observed = _service(tmp_path)
    scorer.max_batch = 3
    try:
        await service.run()
    finally:
        await service.stop()
    assert scorer.calls == [3, 3, 2] * 3
    assert observed == _expected()


async def test_a_scoring_error_stops_the_loop_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, scorer, producer, observed = _service(tmp_path)

    def fail(call: int) -> None:
        if call == 2:
            raise RuntimeError("ONNX Runtime failed")

    scorer.hold = fail
    try:
        with pytest.raises(RuntimeError, match="ONNX Runtime failed"):
            await service.run()
    finally:
        await service.stop()
    # The first partition's windows were detected; nothing was committed, so the batch is
    # read again after a restart.
    assert observed == _expected()[:8]
    assert producer.offsets == []


async def test_refusals_by_the_asset_cap_are_logged_at_most_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Six assets, room for four: the last partition's two are refused (7 readings each).
    service, _, _, _ = _service(tmp_path, max_assets=4)
    with caplog.at_level(logging.WARNING, logger="monitor.service"):
        await service._process(_batch())
        await service._process(_batch_later(STEPS))  # within the minute: counted, not logged
    lines = [r.getMessage() for r in caplog.records if "max_assets" in r.getMessage()]
    assert lines == [
        "windows.max_assets (4) reached: 14 readings of new assets refused, dead-lettered as "
        "asset_limit; raise windows.max_assets or set windows.overflow: evict_idle"
    ]
    assert service._refused == 14
    await service._detect_scored(commit=False)  # their last windows: then both are open
    assert service._open is not None
    reasons = [dict(headers)["plantwatch.reason"] for _, _, headers in service._open.dead_letters]
    assert reasons == [b"asset_limit"] * 28

    caplog.clear()
    service._next_cap_warning = 0.0  # the minute is over
    with caplog.at_level(logging.WARNING, logger="monitor.service"):
        await service._process(_batch_later(2 * STEPS))
    lines = [r.getMessage() for r in caplog.records if "max_assets" in r.getMessage()]
    assert lines == [
        "windows.max_assets (4) reached: 28 readings of new assets refused since the last such "
        "warning, dead-lettered as asset_limit; raise windows.max_assets or set "
        "windows.overflow: evict_idle"
    ]


def _batch_later(steps: int) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
    """The same assets, ``steps`` steps (and offsets) later."""
    return {
        tp: [
            _record(tp, r.offset + 10 * steps, r.key.decode(), step + steps)
            for r, step in zip(records, (s for s in range(STEPS) for _ in range(2)), strict=True)
            if r.key is not None
        ]
        for tp, records in _batch().items()
    }


class _Batches(_Consumer):
    """Hands out the given batches, one per ``getmany``, then stops the loop; records each
    call's ``timeout_ms`` and, with ``on_wait``, runs it before a call that may wait."""

    def __init__(self, service: Service, *batches: Any, on_wait: Any = None) -> None:
        super().__init__(service)
        self.batches = list(batches)
        self.timeouts: list[int] = []
        self.on_wait = on_wait

    async def getmany(
        self, **kwargs: Any
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        self.timeouts.append(kwargs["timeout_ms"])
        if kwargs["timeout_ms"] and self.on_wait is not None:
            self.on_wait()
        if not self.batches:
            self.service.request_stop()
            return {}
        batch = self.batches.pop(0)
        return batch if batch is not None else {}


async def test_the_last_windows_of_a_batch_are_scored_while_the_next_is_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's last scoring call waits until the loop has appended readings of the next
    # batch: it would wait in vain if every batch were drained before the next getmany.
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, scorer, producer, observed = _service(tmp_path)
    consumer = _Batches(service, _batch(), _batch_later(STEPS))
    service._consumer = consumer  # type: ignore[assignment]
    next_batch = _tell_when_appended(service, lambda args: int(args[1][0]) >= T0 + STEPS * 1000)

    def hold(call: int) -> None:
        if call == 3 and not next_batch.wait(timeout=10):
            raise AssertionError("the loop detected the whole batch before fetching the next")

    scorer.hold = hold
    try:
        await service.run()
    finally:
        await service.stop()
    # The next batch's assets continue their windows: every step of it ends one.
    assert observed[: len(_expected())] == _expected()
    assert [o[:2] for o in observed[len(_expected()) :]] == [
        (f"p{tp.partition}-{i}", T0 + step * 1000)
        for tp in PARTITIONS
        for step in range(STEPS, 2 * STEPS)
        for i in range(2)
    ]
    assert consumer.timeouts[1] == 0  # records waiting were taken without a wait
    assert len(producer.offsets) == 1


async def test_windows_left_in_the_scoring_thread_are_detected_before_waiting_for_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No records waiting after the batch: its last windows must be detected before the loop
    # waits for new records (up to fetch_timeout_ms), or their alerts would wait too.
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, _, _, observed = _service(tmp_path)
    seen_before_wait: list[int] = []
    consumer = _Batches(service, _batch(), on_wait=lambda: seen_before_wait.append(len(observed)))
    service._consumer = consumer  # type: ignore[assignment]
    try:
        await service.run()
    finally:
        await service.stop()
    assert consumer.timeouts[1] == 0  # asked whether records were waiting; none were
    assert seen_before_wait[-1] == len(_expected())
    assert observed == _expected()


async def test_a_batch_is_committed_while_the_next_ones_windows_are_scored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One job per partition: the first batch's are calls 1-3, the second's 4-6. The loop
    # commits the first batch once its last windows are detected, with the second batch's
    # first two partitions appended and their jobs with the scoring thread; call 4 waits for
    # that commit (with a drain before each commit it would come before call 4 was handed
    # over, and the thread would idle during the transaction).
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, scorer, producer, observed = _service(tmp_path, commit_interval_ms=0)
    service._consumer = _Batches(service, _batch(), _batch_later(STEPS))  # type: ignore[assignment]
    committed = threading.Event()
    scoring_at_commit: list[int] = []
    send_offsets = producer.send_offsets_to_transaction

    async def record(offsets: dict[TopicPartition, tuple[int, str]], group_id: str) -> None:
        scoring_at_commit.append(len(service._scoring))
        await send_offsets(offsets, group_id)
        committed.set()

    producer.send_offsets_to_transaction = record  # type: ignore[method-assign]

    def hold(call: int) -> None:
        if call == 4 and not committed.wait(timeout=10):
            raise AssertionError("the first batch was not committed while the second's scored")

    scorer.hold = hold
    try:
        await service.run()
    finally:
        await service.stop()
    # Calls 4 and 5 (the second batch's first two partitions) were with the scoring thread.
    assert scoring_at_commit[0] == 2
    first = producer.offsets[0]
    assert sorted(first) == sorted(PARTITIONS)
    # Where a restart reads from is what the first batch's windows needed (the last L - 1
    # readings of each asset: steps 4-6, offsets from 40), not what the store holds after the
    # second batch's readings of the same partitions.
    assert {tp: start for tp, (start, _) in first.items()} == dict.fromkeys(PARTITIONS, 40)
    assert observed[: len(_expected())] == _expected()
    assert len(observed) == 2 * len(_expected()) + 6 * len(PARTITIONS)


class _Replaying(_Batches):
    """``_Batches`` that hands its batches out again after ``seek_to_beginning`` (a rewind)."""

    def __init__(self, service: Service, *batches: Any) -> None:
        super().__init__(service, *batches)
        self.all = list(batches)
        self.sought: list[TopicPartition] = []

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.sought.extend(tps)
        self.batches = list(self.all)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        raise AssertionError("nothing was committed: the rewind reads from the beginning")


async def test_a_commit_failing_while_the_loop_waits_for_records_is_rewound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two one-partition batches, a job each, both with the scoring thread when the loop next
    # asks for records (none are waiting): it detects the first batch's job and commits that
    # batch there, before waiting. That transaction fails (a broker outage): the loop must
    # rewind to the last commit and go on, as for a failure anywhere else, not die.
    monkeypatch.setattr(service_module, "OVERLAP_WINDOWS", 1)
    service, _, producer, observed = _service(tmp_path, commit_interval_ms=0)
    first = {PARTITIONS[0]: _batch()[PARTITIONS[0]]}
    second = {PARTITIONS[0]: _batch_later(STEPS)[PARTITIONS[0]]}
    consumer = _Replaying(service, first, second, None)
    service._consumer = consumer  # type: ignore[assignment]
    send_offsets = producer.send_offsets_to_transaction
    calls: list[int] = []

    async def fail_once(offsets: dict[TopicPartition, tuple[int, str]], group_id: str) -> None:
        calls.append(len(service._unfinished))
        if len(calls) == 1:
            raise KafkaConnectionError("broker gone")
        await send_offsets(offsets, group_id)

    producer.send_offsets_to_transaction = fail_once  # type: ignore[method-assign]
    service._new_producer = lambda: producer  # type: ignore[method-assign]
    try:
        await service.run()
    finally:
        await service.stop()
    # The failed commit was the first batch's, made while the second was still unfinished.
    assert calls[0] == 1
    assert service.metrics.batch_rewinds._value.get() == 1
    assert sorted(consumer.sought) == PARTITIONS  # every assigned partition, from its start
    # Before the failure the first batch's windows were detected; the second's job was left
    # with the scoring thread and dropped. Read again from the beginning: both batches' windows
    # (the first batch's the same again), then committed through the second batch (what its
    # windows need from offset 10 * (2 * STEPS - LENGTH + 1) on).
    first_batch = 2 * (STEPS - LENGTH + 1)
    assert len(observed) == first_batch + 2 * (2 * STEPS - LENGTH + 1)
    assert observed[:first_batch] == observed[first_batch : 2 * first_batch]
    assert producer.offsets[-1] == {
        PARTITIONS[0]: (10 * (2 * STEPS - LENGTH + 1), producer.offsets[-1][PARTITIONS[0]][1])
    }
