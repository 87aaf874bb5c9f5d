"""Offline/online agreement: replay evaluated test series through Kafka and a real ``serve``.

:func:`agree_via_kafka` takes the replays of an offline evaluation (the generic protocol) and
streams the same readings, per series as one asset, to a fresh readings topic of a real broker.
A :class:`monitor.service.Service` (what ``plantwatch serve`` runs) with the same bundle and
detector rule consumes them, publishing every window score to a scores topic and its alert events
to an alerts topic. Both topics are read back (``read_committed``) and compared with the offline
result:

* **scores**: the same ``(asset, ts)`` windows scored, and each score equal within
  ``rtol``/``atol`` (ONNX Runtime may round differently for other batch sizes);
* **alerts**: the same events per asset, in order, equal in id, sequence, type, timestamps,
  severity and top sensors, their scores within the same tolerance.

The topics are created for the run (unique names) and deleted afterwards.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from monitor.config import HoldSettings, Settings
from monitor.detector import DetectorConfig
from monitor.errors import KafkaUnavailableError
from monitor.events import AlertEvent
from monitor.kafka import read_topic
from monitor.records import encode_binary
from monitor.service import Service
from training.evaluate.runner import Replay

logger = logging.getLogger(__name__)

#: Readings per produced message (one asset each, binary format: exact float32 values).
MESSAGE_READINGS = 500
#: How long the service may take to consume everything, seconds.
CONSUME_TIMEOUT_S = 600.0


@dataclass
class Agreement:
    """How the online run compared with the offline replay."""

    series: int = 0
    readings: int = 0
    messages: int = 0
    windows_offline: int = 0
    windows_online: int = 0
    windows_matched: int = 0
    max_abs_score_diff: float = 0.0
    max_rel_score_diff: float = 0.0
    events_offline: int = 0
    events_online: int = 0
    events_matched: int = 0
    #: Up to 10 human-readable differences (empty when everything agrees).
    differences: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def agree(self) -> bool:
        return (
            not self.differences
            and self.windows_offline == self.windows_online == self.windows_matched
            and self.events_offline == self.events_online == self.events_matched
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "agree": self.agree}

    def summary(self) -> str:
        verdict = "agree" if self.agree else "DISAGREE"
        return (
            f"offline and online {verdict}: {self.series} series, {self.readings} readings in "
            f"{self.messages} messages; windows {self.windows_matched}/{self.windows_offline} "
            f"matched ({self.windows_online} online), max score difference "
            f"{self.max_abs_score_diff:.3g} abs / {self.max_rel_score_diff:.3g} rel; alert "
            f"events {self.events_matched}/{self.events_offline} matched "
            f"({self.events_online} online); {self.wall_s:.1f} s"
        )

    def note(self, text: str) -> None:
        if len(self.differences) < 10:
            self.differences.append(text)


def agree_via_kafka(
    replays: Sequence[Replay],
    bundle: Path,
    detector: DetectorConfig,
    *,
    bootstrap: str = "127.0.0.1:9092",
    rtol: float = 1e-4,
    atol: float = 1e-6,
    max_gap_steps: int = 3,
    hold: HoldSettings | None = None,
    routes: Sequence[tuple[Path, Sequence[str]]] = (),
) -> Agreement:
    """Stream ``replays``' readings through Kafka and ``serve``; compare with them.

    ``detector`` must be the rule the offline replays used (``k``/``n``/``m``/hysteresis; the
    rest at the service defaults), and ``hold`` their ``detector.hold`` if any. ``routes``:
    further bundles, each with the names of the series it scored offline (an evaluation with
    asset groups); the service then has a route for each (``Settings.routes``), and ``bundle``
    scores the other series. Raises :class:`KafkaUnavailableError` without a broker.
    """
    return asyncio.run(
        _agree(replays, bundle, detector, bootstrap, rtol, atol, max_gap_steps, hold, routes)
    )


async def _agree(
    replays: Sequence[Replay],
    bundle: Path,
    detector: DetectorConfig,
    bootstrap: str,
    rtol: float,
    atol: float,
    max_gap_steps: int,
    hold: HoldSettings | None = None,
    routes: Sequence[tuple[Path, Sequence[str]]] = (),
) -> Agreement:
    started = time.perf_counter()
    names = [r.series.name for r in replays]
    if len(set(names)) != len(names):
        raise ValueError("series names must be unique: each one is streamed as its own asset")
    run = uuid.uuid4().hex[:8]
    topics = {k: f"plantwatch-eval-{k}-{run}" for k in ("readings", "alerts", "scores", "dlq")}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
    except KafkaError as exc:
        await admin.close()
        raise KafkaUnavailableError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics.values()])
        await _wait_for_leaders(admin, list(topics.values()))
        result = Agreement(series=len(replays))
        result.messages, result.readings = await _produce(
            replays, bundle_features(bundle), bootstrap, topics["readings"]
        )
        settings = Settings.model_validate(
            {
                "kafka": {"bootstrap_servers": bootstrap},
                "input": {
                    "topics": [topics["readings"]],
                    "group_id": f"plantwatch-eval-{run}",
                    "dead_letter_topic": topics["dlq"],
                    "fetch_timeout_ms": 50,
                },
                "model": {"path": str(bundle), "device": "cpu", "reload": "off"},
                "windows": {"max_gap_steps": max_gap_steps},
                # Each series is streamed as an asset of its name: a route takes those it names.
                "routes": [
                    {
                        "name": f"route-{i}",
                        "asset_patterns": [glob.escape(name) for name in names],
                        "model": str(path),
                    }
                    for i, (path, names) in enumerate(routes)
                ],
                "detector": {
                    "k": detector.k,
                    "n": detector.n,
                    "m": detector.m,
                    "hysteresis": detector.hysteresis,
                    **({} if hold is None else {"hold": hold.model_dump()}),
                },
                "alerts": {"topic": topics["alerts"]},
                "scores": {"topic": topics["scores"]},
                "delivery": {"enabled": False},
                "http": {"host": "127.0.0.1", "port": 0},
                "instance_id": f"eval-{run}",
            }
        )
        await _serve_until_consumed(settings, topics["readings"], result.messages)
        online_scores = await _read(bootstrap, topics["scores"])
        online_events = [AlertEvent.from_json(v) for v in await _read(bootstrap, topics["alerts"])]
        dead = await _read(bootstrap, topics["dlq"], idle_s=0.5)
        if dead:
            result.note(f"{len(dead)} messages went to the dead-letter topic")
        _compare_scores(replays, online_scores, result, rtol, atol)
        _compare_events(replays, online_events, result, rtol, atol)
    finally:
        try:
            await admin.delete_topics(list(topics.values()))
        except KafkaError as exc:  # cleanup only: the names are unique anyway
            logger.warning("could not delete topics %s: %r", list(topics.values()), exc)
        await admin.close()
    result.wall_s = time.perf_counter() - started
    return result


def bundle_features(path: Path) -> tuple[str, ...]:
    from monitor.bundle import load_bundle

    return load_bundle(path).manifest.features


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str]) -> None:
    async with asyncio.timeout(30):
        while True:
            described = await admin.describe_topics(topics)
            if all(
                d["error_code"] == 0
                and d["partitions"]
                and all(p["error_code"] == 0 and p["leader"] >= 0 for p in d["partitions"])
                for d in described
            ):
                return
            await asyncio.sleep(0.1)


async def _produce(
    replays: Sequence[Replay], features: Sequence[str], bootstrap: str, topic: str
) -> tuple[int, int]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    messages = readings = 0
    try:
        for r in replays:
            s = r.series
            key = s.name.encode()
            for start in range(0, s.size, MESSAGE_READINGS):
                stop = min(start + MESSAGE_READINGS, s.size)
                value = encode_binary(s.name, features, s.ts_ms[start:stop], s.values[start:stop])
                await producer.send(topic, value=value, key=key)
                messages += 1
                readings += stop - start
        await producer.flush()
    finally:
        await producer.stop()
    return messages, readings


async def _serve_until_consumed(settings: Settings, topic: str, messages: int) -> None:
    registry = CollectorRegistry()
    service = Service(settings, registry=registry)
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        deadline = time.monotonic() + CONSUME_TIMEOUT_S
        while (registry.get_sample_value("plantwatch_messages_total", {"topic": topic}) or 0) < (
            messages
        ):
            if task.done():
                task.result()  # re-raises what stopped the service
                raise RuntimeError("the service stopped before consuming every message")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not consume {messages} messages in time")
            await asyncio.sleep(0.1)
    finally:
        service.request_stop()
        try:
            await asyncio.wait_for(task, timeout=60)
        finally:
            await service.stop()


async def _read(bootstrap: str, topic: str, *, idle_s: float = 1.5) -> list[bytes]:
    """Every committed record value of ``topic``, in offset order."""
    records = await read_topic(bootstrap, topic, idle_s=idle_s)
    return [r.value for r in records if r.value is not None]


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _compare_scores(
    replays: Sequence[Replay], messages: Sequence[bytes], out: Agreement, rtol: float, atol: float
) -> None:
    online: dict[str, dict[int, float]] = {}
    for raw in messages:
        doc = json.loads(raw)
        per = online.setdefault(doc["asset"], {})
        for ts, score in zip(doc["ts"], doc["score"], strict=True):
            if ts in per:
                out.note(f"{doc['asset']}: window at ts {ts} scored twice online")
            per[ts] = float(score)
    out.windows_online = sum(len(v) for v in online.values())
    for r in replays:
        s = r.series
        rows = np.flatnonzero(np.isfinite(r.score))
        out.windows_offline += rows.size
        per = online.get(s.name, {})
        for i in rows.tolist():
            ts = int(s.ts_ms[i])
            if ts not in per:
                out.note(f"{s.name}: window at ts {ts} scored offline only")
                continue
            a, b = float(r.score[i]), per[ts]
            diff = abs(a - b)
            out.max_abs_score_diff = max(out.max_abs_score_diff, diff)
            out.max_rel_score_diff = max(out.max_rel_score_diff, diff / max(abs(a), 1e-30))
            if _close(a, b, rtol, atol):
                out.windows_matched += 1
            else:
                out.note(f"{s.name}: window at ts {ts} scored {a:.6g} offline, {b:.6g} online")
    extra = set(online) - {r.series.name for r in replays}
    if extra:
        out.note(f"online scores for unknown assets {sorted(extra)[:3]}")


def _event_key(e: AlertEvent) -> tuple[Any, ...]:
    return (
        e.alert_id,
        e.seq,
        e.event.value,
        e.ts_ms,
        e.start_ts_ms,
        e.end_ts_ms,
        e.severity.value,
        tuple(s.sensor for s in e.top_sensors),
    )


def _compare_events(
    replays: Sequence[Replay],
    online: Sequence[AlertEvent],
    out: Agreement,
    rtol: float,
    atol: float,
) -> None:
    out.events_online = len(online)
    by_asset: dict[str, list[AlertEvent]] = {}
    for e in online:
        by_asset.setdefault(e.asset, []).append(e)
    for r in replays:
        offline = r.events
        out.events_offline += len(offline)
        got = by_asset.get(r.series.name, [])
        if len(got) != len(offline):
            out.note(f"{r.series.name}: {len(offline)} alert events offline, {len(got)} online")
        for a, b in zip(offline, got, strict=False):
            same = _event_key(a) == _event_key(b) and all(
                _close(x, y, rtol, atol)
                for x, y in (
                    (a.score, b.score),
                    (a.peak_score, b.peak_score),
                    (a.threshold, b.threshold),
                )
            )
            if same:
                out.events_matched += 1
            else:
                out.note(f"{r.series.name}: event differs: offline {a!r} online {b!r}")
