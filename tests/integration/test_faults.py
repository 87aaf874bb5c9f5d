"""Faults on purpose: broker outage, bad bundles during operation, asset floods, slow scoring.

Everything runs on 127.0.0.1 and is bounded in time. The broker-outage test stops and restarts
a *private* broker (``tests/own_kafka.py``), never the shared one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from monitor.bundle import MANIFEST_FILE, MODEL_FILE
from monitor.events import AlertEvent
from monitor.scoring import Scorer
from tests.harness import read_topic, running, sample, settings_for, wait_for
from tests.own_kafka import create_topics, own_kafka

pytestmark = [pytest.mark.kafka]

NewTopic = Callable[..., Awaitable[str]]
START_MS = 1_767_225_600_000
WINDOW = 16  # tiny_bundle's window length


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with own_kafka(tmp_path_factory.mktemp("fault-kafka")) as started:
        yield started


def _reading(asset: str, step: int, scale: float = 1.0) -> tuple[bytes, bytes]:
    base = math.sin(2 * math.pi * step / 50.0)
    values = {"a": base * scale, "b": 2 * base + 10, "c": math.cos(2 * math.pi * step / 50.0)}
    doc = {"asset": asset, "ts": START_MS + 1000 * step, "values": values}
    return asset.encode(), json.dumps(doc).encode()


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    async with AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5) as producer:
        pending = [await producer.send(topic, value=v, key=k) for k, v in messages]
        await asyncio.gather(*pending)


def _stream(assets: list[str], steps: range) -> list[tuple[bytes, bytes]]:
    # Every 50th reading of an asset is 40x off on one sensor: alerts open and resolve.
    return [_reading(a, i, 40.0 if (i // 50) % 3 == 2 else 1.0) for i in steps for a in assets]


async def _scored(bootstrap: str, topic: str) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for record in await read_topic(bootstrap, topic):
        doc = json.loads(record.value)
        counts.update((doc["asset"], t) for t in doc["ts"])
    return counts


async def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=3)) as response,
        ):
            return response.status, json.loads(await response.text())
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


@pytest.mark.slow
async def test_broker_outage_mid_stream_not_ready_then_resumes_without_loss(
    cluster: Any, tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A ~20 s outage of the (private) broker while a backlog is being scored.

    Regression cases: after the restart the group re-formed before the broker had loaded its
    topics and held no partitions for minutes (metadata refresh); and records of a transaction
    failed with OutOfOrderSequenceNumber while aiokafka still committed it, silently losing
    scores (the service now awaits every record and rewinds on failure).
    """
    caplog.set_level(logging.INFO, logger="monitor.service")
    plain = cluster.listener("PLAINTEXT")
    names = {"out.readings": 2, "out.alerts": 1, "out.dlq": 1, "out.scores": 1}
    await create_topics(plain, names)
    settings = settings_for(
        plain,
        tiny_bundle,
        readings="out.readings",
        alerts="out.alerts",
        dead_letter="out.dlq",
        scores={"topic": "out.scores"},
        # Small batches: the outage lands between many transactions, likely inside one.
        input={"fetch_max_records": 50},
        detector={"k": 3, "n": 5, "m": 5},
        kafka={"request_timeout_ms": 5000},
    )
    assets = [f"unit-{i}" for i in range(4)]
    before, after = range(0, 1500), range(1500, 1800)
    timeline: dict[str, float] = {}
    async with running(settings) as service:
        url = service.ops_url
        assert url is not None
        await _produce(plain, "out.readings", _stream(assets, before))
        await wait_for(
            lambda: sample(service, "plantwatch_windows_scored_total") > 0,
            within=30,
            what="scoring to begin",
        )
        began = time.monotonic()
        await asyncio.to_thread(cluster.stop_kafka)
        timeline["broker stopped (s)"] = time.monotonic() - began
        scored_at_stop = sample(service, "plantwatch_windows_scored_total")
        while True:
            status, body = await _readyz(url)
            if status == 503:
                break
            assert time.monotonic() - began < 20, f"/readyz still {status} {body}"
            await asyncio.sleep(0.5)
        assert body["checks"]["broker_reachable"] is False, body
        timeline["/readyz 503 after (s)"] = time.monotonic() - began
        # The outage lasts ~20 s; the service must ride it out.
        while time.monotonic() - began < 20:
            assert service.alive(), "the consume loop died during the outage"
            await asyncio.sleep(0.5)
        restart = time.monotonic()
        await asyncio.to_thread(cluster.start)
        timeline["broker restarted (s)"] = time.monotonic() - restart
        while (ready := await _readyz(url))[0] != 200:
            assert service.alive(), "the consume loop died after the outage"
            assert time.monotonic() - restart < 60, f"not ready 60 s after the restart: {ready}"
            await asyncio.sleep(0.5)
        timeline["/readyz 200 after restart (s)"] = time.monotonic() - restart
        await _produce(plain, "out.readings", _stream(assets, after))
        total = len(assets) * (len(before) + len(after) - (WINDOW - 1))
        await wait_for(
            lambda: (
                sample(service, "plantwatch_readings_total", {"result": "ok"})
                >= len(assets) * (len(before) + len(after))
            ),
            within=60,
            what="every reading to be consumed after the outage",
        )
        rewinds = sample(service, "plantwatch_batch_rewinds_total")
        # Counted once committed, so a rewound batch counts once (it used to count twice, and
        # this wait then ended before the last readings were scored: the "lost" windows).
        counted = sample(service, "plantwatch_readings_total", {"result": "ok"})
        assert counted == len(assets) * (len(before) + len(after)), counted
    scored = await _scored(plain, "out.scores")
    expected = {(a, START_MS + 1000 * i) for a in assets for i in range(WINDOW - 1, after.stop)}
    missing = expected - set(scored)
    events = [AlertEvent.from_json(r.value) for r in await read_topic(plain, "out.alerts")]
    ids = Counter(e.event_id for e in events)
    print(
        f"\nbroker outage: {len(expected)} windows expected ({total}), {len(missing)} missing, "
        f"{sum(n > 1 for n in scored.values())} scored twice; {scored_at_stop:.0f} scored before "
        f"the stop; {len(events)} alert events, {sum(n > 1 for n in ids.values())} duplicated; "
        f"{rewinds:.0f} batch(es) rewound"
    )
    for what, seconds in timeline.items():
        print(f"  {what}: {seconds:.1f}")
    for record in caplog.records:
        if record.name == "monitor.service" and "rew" in record.getMessage():
            print(f"  service: {record.getMessage()[:160]}")
    assert not missing, f"{len(missing)} windows never scored, e.g. {sorted(missing)[:3]}"
    assert events
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]


# --- model directory receiving bad bundles during operation -----------------------------------


def _truncate_manifest(path: Path) -> None:
    text = (path / MANIFEST_FILE).read_text()
    (path / MANIFEST_FILE).write_text(text[: len(text) // 2])


def _truncate_model(path: Path) -> None:
    data = (path / MODEL_FILE).read_bytes()
    (path / MODEL_FILE).write_bytes(data[: len(data) // 3])
    # The watcher looks at the manifest: a writer that rewrites it last makes it look.
    (path / MANIFEST_FILE).write_text((path / MANIFEST_FILE).read_text() + "\n")


def _other_features(path: Path) -> None:
    doc = json.loads((path / MANIFEST_FILE).read_text())
    doc["features"] = ["a", "b", "d"]
    (path / MANIFEST_FILE).write_text(json.dumps(doc))


def _other_window(path: Path) -> None:
    doc = json.loads((path / MANIFEST_FILE).read_text())
    doc["window"]["length"] = 2 * doc["window"]["length"]
    (path / MANIFEST_FILE).write_text(json.dumps(doc))


async def test_truncated_or_incompatible_bundles_keep_the_old_model_serving(
    kafka_bootstrap: str, new_topic: NewTopic, tiny_bundle: Path, tmp_path: Path
) -> None:
    readings, alerts, dlq = await new_topic(partitions=1), await new_topic(1), await new_topic(1)
    bundle = tmp_path / "models" / "current"
    shutil.copytree(tiny_bundle, bundle)
    settings = settings_for(
        kafka_bootstrap,
        bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        model={"reload": "watch", "reload_poll_s": 0.2},
    )
    faults = [_truncate_manifest, _truncate_model, _other_features, _other_window]
    async with running(settings) as service:
        sha = service.models.current.bundle.sha256
        step = 0
        for i, fault in enumerate(faults, start=1):
            # In place, as a careless copy would do it (the supported way is a rename).
            shutil.rmtree(bundle)
            shutil.copytree(tiny_bundle, bundle)
            fault(bundle)
            await wait_for(
                lambda i=i: (
                    sample(service, "plantwatch_model_reloads_total", {"result": "invalid"}) >= i
                ),
                within=20,
                what=f"{fault.__name__} to be refused",
            )
            assert service.models.current.bundle.sha256 == sha, fault.__name__
            # ... and the old model keeps scoring.
            await _produce(
                kafka_bootstrap, readings, [_reading("unit-1", step + j) for j in range(40)]
            )
            step += 40
            want = step - (WINDOW - 1)
            await wait_for(
                lambda want=want: sample(service, "plantwatch_windows_scored_total") >= want,
                within=20,
                what=f"scoring to go on after {fault.__name__}",
            )
        assert sample(service, "plantwatch_model_reloads_total", {"result": "ok"}) == 0
        assert service.readiness()["model_loaded"]


# --- a flood of new assets ----------------------------------------------------------------------


@pytest.mark.parametrize("overflow", ["reject", "evict_idle"])
async def test_flood_of_new_assets_stays_bounded(
    kafka_bootstrap: str, new_topic: NewTopic, tiny_bundle: Path, overflow: str
) -> None:
    readings, alerts, dlq = await new_topic(partitions=2), await new_topic(1), await new_topic(1)
    cap, flood, steps = 20, 400, 3
    settings = settings_for(
        kafka_bootstrap,
        tiny_bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        windows={"max_assets": cap, "overflow": overflow},
        metrics={"max_asset_labels": 5},
    )
    async with running(settings) as service:
        messages = [_reading(f"flood-{a:04d}", i) for i in range(steps) for a in range(flood)]
        await _produce(kafka_bootstrap, readings, messages)
        await wait_for(
            lambda: (
                sample(service, "plantwatch_messages_total", {"topic": readings}) >= len(messages)
            ),
            within=60,
            what="the flood to be consumed",
        )
        assert service.alive()
        tracked = sample(service, "plantwatch_tracked_assets")
        limited = sample(service, "plantwatch_dead_letter_total", {"reason": "asset_limit"})
        assert len(service.pipeline.store) <= cap
        assert tracked <= cap
        # Per-asset label cardinality stays capped too.
        labelled = {
            s.labels["asset"]
            for metric in service.registry.collect()
            for s in metric.samples
            if s.name == "plantwatch_anomaly_score"
        }
        assert len(labelled) <= 5
    dead = await read_topic(kafka_bootstrap, dlq)
    if overflow == "reject":
        assert tracked == cap
        assert limited == len(messages) - cap * steps
        reasons = Counter(dict(r.headers)["plantwatch.reason"].decode() for r in dead)
        assert reasons == {"asset_limit": len(messages) - cap * steps}
    else:
        assert limited == 0
        assert not dead
    print(f"\nflood ({overflow}): {flood} assets, tracked {tracked:.0f}, asset_limit {limited:.0f}")


# --- a slow scoring backend ---------------------------------------------------------------------


async def test_slow_scoring_keeps_batches_bounded_and_the_group_stable(
    kafka_bootstrap: str,
    new_topic: NewTopic,
    tiny_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A scorer 0.4 s per call (a saturated GPU, a throttled CPU): batches stay at most
    ``fetch_max_records`` windows, heartbeats go on (scoring runs in a worker thread), so the
    member keeps its partitions: no rebalance, no generation change."""
    readings, alerts, dlq = await new_topic(partitions=2), await new_topic(1), await new_topic(1)
    max_records = 200
    settings = settings_for(
        kafka_bootstrap,
        tiny_bundle,
        readings=readings,
        alerts=alerts,
        dead_letter=dlq,
        input={"fetch_max_records": max_records},
    )
    sizes: list[int] = []
    original = Scorer.score

    def slow_score(self: Scorer, windows: Any) -> Any:
        sizes.append(len(windows))
        time.sleep(0.4)
        return original(self, windows)

    monkeypatch.setattr(Scorer, "score", slow_score)
    caplog.set_level(logging.INFO, logger="monitor.service")
    assets = [f"unit-{i}" for i in range(8)]
    async with running(settings) as service:
        consumer = service._consumer
        assert consumer is not None
        await wait_for(lambda: bool(consumer.assignment()), within=30, what="assignment")
        generation = consumer._coordinator.generation
        # ~12 s of scoring work at 0.4 s per batch of <= 200 windows, longer than the session
        # timeout (10 s) and several heartbeat intervals.
        messages = _stream(assets, range(0, 750))
        await _produce(kafka_bootstrap, readings, messages)
        began = time.monotonic()
        await wait_for(
            lambda: (
                sample(service, "plantwatch_messages_total", {"topic": readings}) >= len(messages)
            ),
            within=90,
            what="the backlog to be scored",
        )
        took = time.monotonic() - began
        assert consumer._coordinator.generation == generation
        assert consumer.assignment()
    assigned = [r for r in caplog.records if r.getMessage().startswith("partitions assigned")]
    revoked = [r for r in caplog.records if r.getMessage().startswith("partitions revoked")]
    print(
        f"\nslow scoring: {len(sizes)} calls, max {max(sizes)} windows, {took:.1f}s, "
        f"generation {generation}, {len(assigned)} assignment(s)"
    )
    assert max(sizes) <= max_records
    assert len(assigned) == 1
    # The graceful stop at the end revokes once; nothing before it.
    assert len(revoked) <= 1
