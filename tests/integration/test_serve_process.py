"""``plantwatch serve`` as a real process: SIGKILL and restart, SIGTERM, hot reload."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka.admin import AIOKafkaAdminClient

from monitor.bundle import MANIFEST_FILE, MODEL_FILE
from monitor.events import AlertEvent
from tests.harness import read_topic, running, sample, settings_for, start_serve, wait_for
from tests.plant import PLANT, PLANT_WINDOW
from training.simulator import PlantConfig, PlantSimulator, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NewTopic = Callable[..., Awaitable[str]]


class Topics:
    def __init__(self, readings: str, alerts: str, dlq: str, scores: str) -> None:
        self.readings, self.alerts, self.dlq, self.scores = readings, alerts, dlq, scores


async def _topics(new_topic: NewTopic) -> Topics:
    return Topics(
        await new_topic(partitions=3),
        await new_topic(partitions=1),
        await new_topic(partitions=1),
        await new_topic(partitions=1),
    )


def _config(
    tmp_path: Path, bootstrap: str, bundle: Path, t: Topics, group: str, *, routed: bool = False
) -> Path:
    """serve's settings file; ``routed``: the pumps on ``model.path``, a route for the
    compressors (the same bundle: the routing is under test, not the model)."""
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap},
        "input": {"topics": [t.readings], "group_id": group, "dead_letter_topic": t.dlq},
        "model": {"path": str(bundle), "device": "cpu", "reload": "off"},
        "alerts": {"topic": t.alerts},
        "scores": {"topic": t.scores},
        "delivery": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": 0},
        "instance_id": "proc-test",
        "shutdown_deadline_s": 15,
    }
    if routed:
        doc["input"]["asset_patterns"] = ["pump-*"]
        doc["routes"] = [
            {"name": "compressors", "asset_patterns": ["compressor-*"], "model": str(bundle)}
        ]
    path = tmp_path / "plantwatch.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _expected_windows(sim: PlantSimulator) -> set[tuple[str, int]]:
    """(asset, ts) of every reading from each asset's first full window on."""
    want: set[tuple[str, int]] = set()
    for ts_ms, _ in sim.arrays():
        steps = ts_ms.tolist()
        for asset in sim.assets:
            want.update((asset, t) for t in steps)
    start = sim.config.start_ms + (PLANT_WINDOW - 1) * sim.config.interval_ms
    return {(a, t) for a, t in want if t >= start}


async def _scored(bootstrap: str, topic: str) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for record in await read_topic(bootstrap, topic):
        doc = json.loads(record.value)
        counts.update((doc["asset"], t) for t in doc["ts"])
    return counts


async def _committed(bootstrap: str, group: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(o.offset for o in offsets.values() if o.offset >= 0)


def _plant(hours: float, seed: int, n_faults: int) -> PlantSimulator:
    return PlantSimulator(
        PlantConfig(
            **PLANT,
            start="2026-01-02T00:00:00Z",
            duration_s=hours * 3600,
            n_faults=n_faults,
            fault_duration_s=(300.0, 900.0),
            seed=seed,
        )
    )


@pytest.mark.parametrize("routed", [False, True], ids=["one-bundle", "routes"])
async def test_sigkill_mid_stream_then_restart_loses_and_repeats_nothing(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path, tmp_path: Path, routed: bool
) -> None:
    """Killed mid-stream and restarted, serve scores every window and repeats no alert event;
    with routes too (each route's windows and alert state restored from the commits)."""
    t = await _topics(new_topic)
    sim = _plant(2, seed=31, n_faults=6)
    group = f"kill-test-{uuid.uuid4().hex[:6]}"
    config = _config(tmp_path, kafka_bootstrap, plant_bundle, t, group=group, routed=routed)
    log = tmp_path / "serve.log"
    first = start_serve(config, log)
    try:
        producing = asyncio.create_task(produce(sim, kafka_bootstrap, t.readings, rate=4000))
        await asyncio.sleep(3.5)
        assert first.poll() is None, log.read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        committed_at_kill = await _committed(kafka_bootstrap, group)
        produced = await producing
        assert 0 < committed_at_kill < produced, "the kill must land mid-stream"
        second = start_serve(config, log)
        try:
            expected = _expected_windows(sim)
            deadline = time.monotonic() + 120
            while True:
                scored = await _scored(kafka_bootstrap, t.scores)
                if expected <= set(scored) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        for proc in (first,):
            if proc.poll() is None:
                proc.kill()
    missing = expected - set(scored)
    assert not missing, f"{len(missing)} windows never scored, e.g. {sorted(missing)[:3]}"
    repeated = sum(1 for n in scored.values() if n > 1)
    events = [AlertEvent.from_json(r.value) for r in await read_topic(kafka_bootstrap, t.alerts)]
    ids = Counter(e.event_id for e in events)
    print(
        f"\nkill/restart: {len(expected)} windows expected, all scored; "
        f"{repeated} scored twice; {len(events)} alert events, "
        f"{sum(n > 1 for n in ids.values())} duplicated; committed at kill {committed_at_kill}"
    )
    assert events, "the faults should have raised alerts"
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]


async def test_sigterm_stops_within_deadline_and_commits_exactly(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path, tmp_path: Path
) -> None:
    t = await _topics(new_topic)
    sim = _plant(1, seed=32, n_faults=3)
    config = _config(tmp_path, kafka_bootstrap, plant_bundle, t, group="term-test")
    log = tmp_path / "serve.log"
    proc = start_serve(config, log)
    try:
        producing = asyncio.create_task(produce(sim, kafka_bootstrap, t.readings, rate=3000))
        await asyncio.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        rc = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - started
        await producing
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    messages = [line["message"] for line in lines]
    assert rc == 0, messages[-10:]
    assert took < 15, f"took {took:.1f}s beyond the 15 s deadline"
    assert "stopped cleanly" in messages
    assert await _committed(kafka_bootstrap, "term-test") > 0

    # A successor in the same group finishes the stream: together every window is scored
    # exactly once, because the graceful stop committed what it had scored.
    settings = settings_for(
        kafka_bootstrap,
        plant_bundle,
        readings=t.readings,
        alerts=t.alerts,
        dead_letter=t.dlq,
        input={"group_id": "term-test"},
        scores={"topic": t.scores},
    )
    expected = _expected_windows(sim)
    async with running(settings):
        deadline = time.monotonic() + 60
        while True:
            scored = await _scored(kafka_bootstrap, t.scores)
            if expected <= set(scored) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
    assert expected <= set(scored)
    assert max(scored.values()) == 1, "a window was scored twice after a graceful stop"


async def test_hot_reload_swaps_valid_and_refuses_tampered_bundles(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path, tmp_path: Path
) -> None:
    t = await _topics(new_topic)
    bundle = tmp_path / "models" / "current"
    shutil.copytree(plant_bundle, bundle)
    settings = settings_for(
        kafka_bootstrap,
        bundle,
        readings=t.readings,
        alerts=t.alerts,
        dead_letter=t.dlq,
        model={"reload": "watch", "reload_poll_s": 0.2},
    )

    def swap_in(mutate: Callable[[Path], None]) -> None:
        staging = tmp_path / "models" / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(plant_bundle, staging)
        mutate(staging)
        old = tmp_path / "models" / "old"
        bundle.rename(old)
        staging.rename(bundle)
        shutil.rmtree(old)

    def retune(path: Path) -> None:
        doc = json.loads((path / MANIFEST_FILE).read_text())
        doc["model"]["version"] = "v2-retuned"
        doc["threshold"]["value"] *= 2
        (path / MANIFEST_FILE).write_text(json.dumps(doc))

    def tamper(path: Path) -> None:
        data = bytearray((path / MODEL_FILE).read_bytes())
        data[-10] ^= 0x55
        (path / MODEL_FILE).write_bytes(bytes(data))

    sim = _plant(0.25, seed=33, n_faults=0)
    async with running(settings) as service:
        version = service.models.current.ref.version
        threshold = service.models.current.threshold
        producing = asyncio.create_task(produce(sim, kafka_bootstrap, t.readings, rate=2000))

        swap_in(tamper)
        await wait_for(
            lambda: sample(service, "plantwatch_model_reloads_total", {"result": "invalid"}) == 1,
            within=20,
            what="the tampered bundle to be refused",
        )
        assert service.models.current.ref.version == version

        swap_in(retune)
        await wait_for(
            lambda: service.models.current.ref.version == "v2-retuned",
            within=20,
            what="the retuned bundle to be swapped in",
        )
        assert service.models.current.threshold == pytest.approx(2 * threshold)
        assert sample(service, "plantwatch_model_reloads_total", {"result": "ok"}) == 1
        assert sample(
            service, "plantwatch_anomaly_threshold", {"route": "default"}
        ) == pytest.approx(2 * threshold)
        produced = await producing
        await wait_for(
            lambda: sample(service, "plantwatch_readings_total", {"result": "ok"}) == produced,
            within=60,
            what="every reading to be consumed across the reloads",
        )
        # No reading was dropped while models were swapped.
        scored = sample(service, "plantwatch_windows_scored_total")
        assert scored == produced - (PLANT_WINDOW - 1) * len(sim.assets)
