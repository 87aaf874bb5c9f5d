"""Scale-out on consumer groups: real ``serve`` processes sharing a 6-partition topic.

Three instances under a steady simulated load; then a fourth joins, one is SIGKILLed (and not
restarted) and one stops gracefully. Every reading after each asset's first full window must be
scored at least once (the scores topic is written in the same transactions as the alerts and the
offsets), no alert event may appear twice, and the time the group needs to catch up with what
was produced at the moment of each change is measured and printed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from monitor import offsets
from monitor.events import AlertEvent
from tests.harness import read_topic, start_serve
from tests.plant import PLANT, PLANT_WINDOW
from training.simulator import PlantConfig, PlantSimulator, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NewTopic = Callable[..., Awaitable[str]]
PARTITIONS = 6
RATE = 600  # readings/s: well under what three instances score on 2 shared cores
#: A killed member holds its partitions until its session times out (aiokafka: 10 s).
RECOVERY_LIMIT_S = 30.0
TRANSACTION_TIMEOUT_MS = 10_000
ABORT_CHECK = "transaction.abort.timed.out.transaction.cleanup.interval.ms"


class Group:
    """The serve processes of one consumer group, with their logs."""

    def __init__(self, tmp_path: Path, doc: dict[str, Any]) -> None:
        self.tmp_path, self.doc = tmp_path, doc
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.gone: list[subprocess.Popen[bytes]] = []

    def start(self, name: str) -> None:
        doc = {**self.doc, "instance_id": name}
        config = self.tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(doc))
        self.procs[name] = start_serve(config, self.tmp_path / f"{name}.log")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        self.gone.append(proc)

    def log(self, name: str) -> str:
        return (self.tmp_path / f"{name}.log").read_text()

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"

    def close(self) -> None:
        for proc in [*self.procs.values(), *self.gone]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


async def _abort_check_s(bootstrap: str) -> float:
    """How often the broker aborts transactions past their timeout."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, "0", {ABORT_CHECK: None})]
        )
    finally:
        await admin.close()
    [resource] = response.to_object()["resources"]
    [entry] = resource["config_entries"]
    return int(entry["config_value"]) / 1000


async def _transactions_end(bootstrap: str, topics: list[str], by: float) -> None:
    """Wait until no transaction is open on ``topics`` (each partition's last stable offset has
    reached its high watermark), failing at monotonic time ``by``.

    A SIGKILLed instance's open transaction holds back every ``read_committed`` reader of the
    partitions it wrote to until the broker aborts it: after the transaction timeout, at its
    next check for timed-out transactions.
    """
    committed = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    everything = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await committed.start()
    await everything.start()
    try:
        tps = [TopicPartition(t, 0) for t in topics]  # created with one partition each
        while True:
            stable = await committed.end_offsets(tps)
            ends = await everything.end_offsets(tps)
            if stable == ends:
                return
            if time.monotonic() > by:
                open_at = {f"{tp.topic[-8:]}[{tp.partition}]": (stable[tp], ends[tp]) for tp in tps}
                raise AssertionError(f"transactions still open (stable offset, end): {open_at}")
            await asyncio.sleep(0.25)
    finally:
        await committed.stop()
        await everything.stop()


async def _scored(bootstrap: str, topic: str) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for record in await read_topic(bootstrap, topic, idle_s=1.0):
        doc = json.loads(record.value)
        counts.update((doc["asset"], t) for t in doc["ts"])
    return counts


class Progress:
    """How far the group has scored each partition (from its commit metadata)."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.topic, self.group = topic, group
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
        self.tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    async def __aenter__(self) -> Progress:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def ends(self) -> dict[TopicPartition, int]:
        ends: dict[TopicPartition, int] = await self.consumer.end_offsets(self.tps)
        return ends

    async def wait_for_data(self) -> None:
        async with asyncio.timeout(30):
            while min((await self.ends()).values()) == 0:  # noqa: ASYNC110 - polls the broker
                await asyncio.sleep(0.2)

    async def scored_through(self) -> dict[TopicPartition, int]:
        committed = await self.admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        out = {}
        for tp in self.tps:
            meta = committed.get(tp)
            state = offsets.decode(meta.metadata if meta is not None else None)
            out[tp] = state.scored_through if state is not None else -1
        return out

    async def caught_up(self, since: float, group: Group, what: str) -> float:
        """Seconds from ``since`` until everything produced up to 1 s later was scored.

        (Up to 1 s later, so that partitions stalled by the change count: a killed member's
        partitions stop moving until its session times out.)
        """
        await asyncio.sleep(max(0.0, since + 1.0 - time.monotonic()))
        target = await self.ends()
        while True:
            group.check_alive()
            through = await self.scored_through()
            if all(through[tp] >= end - 1 for tp, end in target.items() if end > 0):
                return time.monotonic() - since
            if time.monotonic() - since > RECOVERY_LIMIT_S:
                lagging = {tp.partition: (through[tp], target[tp]) for tp in target}
                raise AssertionError(f"{what}: not caught up in {RECOVERY_LIMIT_S:g}s: {lagging}")
            await asyncio.sleep(0.25)


@pytest.mark.parametrize("routed", [False, True], ids=["one-bundle", "routes"])
async def test_group_scales_out_survives_sigkill_and_graceful_stop(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path, tmp_path: Path, routed: bool
) -> None:
    """``routed``: each instance serves the pumps on ``model.path`` and the compressors on a
    route (the same bundle: the handover of every route's windows and alert state is under
    test, not the model)."""
    readings = await new_topic(partitions=PARTITIONS)
    alerts, dlq, scores = [await new_topic(partitions=1) for _ in range(3)]
    group_id = f"scaleout-{readings[-8:]}"
    doc: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": kafka_bootstrap,
            "transaction_timeout_ms": TRANSACTION_TIMEOUT_MS,
        },
        "input": {"topics": [readings], "group_id": group_id, "dead_letter_topic": dlq},
        "model": {
            "path": str(plant_bundle),
            "device": "cpu",
            "reload": "off",
            "workers": 1,
            "threads": 1,
        },
        # A quick alert rule, so that alerts open (and are checked for duplicates) in a short run.
        "detector": {"k": 6, "n": 10, "m": 10},
        "alerts": {"topic": alerts},
        "scores": {"topic": scores},
        "delivery": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": 0},
        "shutdown_deadline_s": 10,
    }
    if routed:
        doc["input"]["asset_patterns"] = ["pump-*"]
        doc["routes"] = [
            {"name": "compressors", "asset_patterns": ["compressor-*"], "model": str(plant_bundle)}
        ]
    sim = PlantSimulator(
        PlantConfig(
            **{**PLANT, "n_pumps": 9, "n_compressors": 3},
            start="2026-01-02T00:00:00Z",
            duration_s=2400,
            n_faults=3,
            fault_duration_s=(300.0, 600.0),
            seed=41,
        )
    )
    group = Group(tmp_path, doc)
    recovery: dict[str, float] = {}
    began = time.monotonic()
    try:
        for name in ("a", "b", "c"):
            group.start(name)
        async with Progress(kafka_bootstrap, readings, group_id) as progress:
            producing = asyncio.create_task(produce(sim, kafka_bootstrap, readings, rate=RATE))
            # Steady state: all six partitions scored by the three instances.
            await progress.wait_for_data()
            recovery["3 instances start"] = await progress.caught_up(began, group, "start")

            for change, act in (
                ("4th instance joins", lambda: group.start("d")),
                ("SIGKILL b", lambda: group.kill("b")),
                ("SIGTERM c", lambda: group.procs["c"].send_signal(signal.SIGTERM)),
            ):
                await asyncio.sleep(2.0)
                at = time.monotonic()
                act()
                if change == "SIGKILL b":
                    killed_at = at
                if change == "SIGTERM c":
                    stopped = group.procs.pop("c")
                    assert await asyncio.to_thread(stopped.wait, 20) == 0, group.log("c")[-2000:]
                recovery[change] = await progress.caught_up(at, group, change)
            produced = await producing
            recovery["end of stream"] = await progress.caught_up(time.monotonic(), group, "end")
    finally:
        for name in list(group.procs):
            if group.procs[name].poll() is None:
                group.procs[name].send_signal(signal.SIGTERM)
        codes = {n: p.wait(20) for n, p in group.procs.items()}
        group.close()
    assert codes == {"a": 0, "d": 0}, codes
    # b died inside a transaction; the scores and alerts it wrote stay unreadable until the
    # broker aborts that transaction, and so does everything written after them.
    aborted_by = killed_at + TRANSACTION_TIMEOUT_MS / 1000 + await _abort_check_s(kafka_bootstrap)
    await _transactions_end(kafka_bootstrap, [scores, alerts], by=aborted_by + 5.0)

    expected = set()
    first = sim.config.start_ms + (PLANT_WINDOW - 1) * sim.config.interval_ms
    for ts_ms, _ in sim.arrays():
        steps = [t for t in ts_ms.tolist() if t >= first]
        expected.update((asset, t) for asset in sim.assets for t in steps)
    scored = await _scored(kafka_bootstrap, scores)
    missing = expected - set(scored)
    by_asset = Counter(asset for asset, _ in missing)
    assert not missing, (
        f"{len(missing)} windows never scored: {dict(by_asset)}, e.g. {min(missing)}"
    )
    events = [AlertEvent.from_json(r.value) for r in await read_topic(kafka_bootstrap, alerts)]
    ids = Counter(e.event_id for e in events)
    twice = sum(1 for n in scored.values() if n > 1)
    print(
        f"\nscale-out: {produced} readings, {len(expected)} windows expected, all scored "
        f"({twice} twice); {len(events)} alert events, "
        f"{sum(n > 1 for n in ids.values())} duplicated; total {time.monotonic() - began:.0f}s"
    )
    for change, seconds in recovery.items():
        print(f"  caught up after {change}: {seconds:.1f}s")
    assert events, "the quick alert rule should have opened alerts"
    assert max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]
