"""``input.commit_interval_ms``: the batches of an interval share one Kafka transaction.

Against the real local broker: committing per interval must change nothing a consumer of the
outputs sees (the same alert events with the same ids, every window scored exactly once), and a
rebalance must commit what is open before the partitions move (else the next owner scores them
again, or the old owner commits partitions that are no longer its own).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from monitor.kafka import read_topic
from monitor.service import Service
from tests.harness import (
    assert_alert_sequences,
    read_alerts,
    running,
    sample,
    settings_for,
    wait_consumed,
    wait_for,
)
from tests.plant import PLANT, PLANT_WINDOW
from training.simulator import PlantConfig, PlantSimulator, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NewTopic = Callable[..., Awaitable[str]]


async def _scored(bootstrap: str, topic: str) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    for record in await read_topic(bootstrap, topic, idle_s=1.0):
        doc = json.loads(record.value)
        counts.update((doc["asset"], t) for t in doc["ts"])
    return counts


def _batches(service: Service, stage: str) -> float:
    return sample(service, "plantwatch_batch_stage_seconds_count", {"stage": stage})


async def _outputs(new_topic: NewTopic) -> dict[str, str]:
    return {name: await new_topic(partitions=1) for name in ("alerts", "dead_letter", "scores")}


def _settings(bootstrap: str, bundle: Path, readings: str, out: dict[str, str], **input_: Any):
    return settings_for(
        bootstrap,
        bundle,
        readings=readings,
        alerts=out["alerts"],
        dead_letter=out["dead_letter"],
        input={"fetch_max_records": 200, **input_},
        scores={"topic": out["scores"]},
    )


async def test_per_interval_commits_give_the_same_outputs_as_per_batch(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    sim = PlantSimulator(
        PlantConfig(
            **PLANT,
            start="2026-01-04T00:00:00Z",
            duration_s=3 * 3600,
            n_faults=3,
            seed=31,
        )
    )
    readings = await new_topic(partitions=3)
    produced = await produce(sim, kafka_bootstrap, readings)
    expected = produced - (PLANT_WINDOW - 1) * len(sim.assets)
    runs = {}
    for interval in (0, 1_000):
        out = await _outputs(new_topic)
        settings = _settings(
            kafka_bootstrap, plant_bundle, readings, out, commit_interval_ms=interval
        )
        async with running(settings) as service:
            await wait_consumed(service, readings, produced)
            batches, commits = _batches(service, "decode"), _batches(service, "commit")
        scored = await _scored(kafka_bootstrap, out["scores"])
        assert sum(scored.values()) == expected, interval
        assert set(scored.values()) == {1}, f"windows scored twice with interval {interval}"
        runs[interval] = (await read_alerts(kafka_bootstrap, out["alerts"]), batches, commits)
    (per_batch, batches0, commits0), (per_interval, batches1, commits1) = runs[0], runs[1_000]
    print(
        f"\nper batch: {commits0:.0f} commits / {batches0:.0f} batches; "
        f"per second: {commits1:.0f} / {batches1:.0f}"
    )
    assert commits0 == batches0 > 10
    assert 0 < commits1 < batches1 / 3
    assert per_batch, "the faults raised no alerts: the comparison below would be empty"
    # Per asset (the alerts' key) the events must be the same, in the same order. Across assets
    # read from different input partitions the order follows how the fetches interleaved the
    # partitions, which differs between runs.
    assert _per_asset(per_interval) == _per_asset(per_batch)
    assert_alert_sequences(per_interval)


def _per_asset(events: list[Any]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for e in events:
        out.setdefault(e.asset, []).append(e.to_json())
    return out


async def test_a_rebalance_commits_what_is_open_before_the_partitions_move(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    sim = PlantSimulator(
        PlantConfig(
            **PLANT,
            start="2026-01-05T00:00:00Z",
            duration_s=3 * 3600,
            n_faults=3,
            seed=32,
        )
    )
    readings = await new_topic(partitions=4)
    produced = await produce(sim, kafka_bootstrap, readings)
    out = await _outputs(new_topic)
    # The longest interval, which this test does not wait for: only the rebalance and the
    # graceful stops commit.
    first = _settings(kafka_bootstrap, plant_bundle, readings, out, commit_interval_ms=60_000)
    second = first.model_copy(update={"instance_id": f"{first.instance_id}-b"})
    async with running(first) as a:
        await wait_for(lambda: _batches(a, "decode") > 5, within=20, what="batches handled")
        assert sample(a, "plantwatch_messages_total", {"topic": readings}) == 0
        async with running(second) as b:
            assert b._consumer is not None
            await wait_for(
                lambda: bool(b._consumer and b._consumer.assignment()),
                within=20,
                what="the second instance to get partitions",
            )
            # The revocation committed what the first had handled, before its interval was up.
            assert sample(a, "plantwatch_messages_total", {"topic": readings}) > 0
            await asyncio.sleep(2.0)  # let the second read what it got
    # Both stopped gracefully, each committing what it had open.
    consumed = [sample(s, "plantwatch_messages_total", {"topic": readings}) for s in (a, b)]
    assert sum(consumed) >= produced
    scored = await _scored(kafka_bootstrap, out["scores"])
    assert sum(scored.values()) == produced - (PLANT_WINDOW - 1) * len(sim.assets)
    assert set(scored.values()) == {1}, "windows scored twice across the rebalance"
    events = await read_alerts(kafka_bootstrap, out["alerts"])
    assert len({(e.alert_id, e.seq) for e in events}) == len(events), "an alert event twice"
    assert_alert_sequences(events)
