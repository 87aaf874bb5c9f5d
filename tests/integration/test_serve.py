"""``serve`` end to end against the real local Kafka broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from monitor.events import EventType
from tests.harness import (
    assert_alert_sequences,
    group_input,
    read_alerts,
    running,
    sample,
    settings_for,
    wait_consumed,
)
from tests.plant import PLANT
from training.simulator import FAULT_KINDS, PlantConfig, PlantSimulator, produce

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

NewTopic = Callable[..., Awaitable[str]]
# A stuck sensor is caught by the flatline check (training.flatline), whatever its value.
CLEAR_FAULTS = ("bearing_wear", "cavitation", "stuck_sensor")


async def _monitor(
    kafka_bootstrap: str, new_topic: NewTopic, bundle: Path, sim: PlantSimulator, **extra: Any
) -> tuple[list, dict[str, float]]:
    readings = await new_topic(partitions=3)
    alerts = await new_topic(partitions=1)
    dlq = await new_topic(partitions=1)
    produced = await produce(sim, kafka_bootstrap, readings)
    settings = settings_for(
        kafka_bootstrap, bundle, readings=readings, alerts=alerts, dead_letter=dlq, **extra
    )
    async with running(settings) as service:
        await wait_consumed(service, readings, produced)
        figures = {
            "produced": produced,
            "ok": sample(service, "plantwatch_readings_total", {"result": "ok"}),
            "scored": sample(service, "plantwatch_windows_scored_total"),
            "held": sample(service, "plantwatch_windows_held_total"),
        }
        for stage in ("decode", "windows", "score", "detect", "commit"):
            figures[f"batches_{stage}"] = sample(
                service, "plantwatch_batch_stage_seconds_count", {"stage": stage}
            )
    return await read_alerts(kafka_bootstrap, alerts), figures


async def _monitor_by_group(
    kafka_bootstrap: str,
    new_topic: NewTopic,
    bundles: dict[str, Path],
    sim: PlantSimulator,
    *,
    routed: bool = False,
) -> tuple[list, dict[str, dict[str, float]]]:
    """The asset groups of ``bundles`` (pattern: bundle) on one readings topic, one alerts topic:
    a service per group side by side, each naming the other groups in
    input.other_asset_patterns; or (``routed``) one service, the first group's bundle as
    model.path and a route (Settings.routes) for each of the others. Figures per service."""
    readings = await new_topic(partitions=3)
    alerts = await new_topic(partitions=1)
    dlq = await new_topic(partitions=1)
    produced = await produce(sim, kafka_bootstrap, readings)
    topics = {"readings": readings, "alerts": alerts, "dead_letter": dlq}
    if routed:
        (first, bundle), *others = bundles.items()
        routes = [
            {"name": f"group-{i}", "asset_patterns": [group], "model": str(path)}
            for i, (group, path) in enumerate(others)
        ]
        extra = {"input": {"asset_patterns": [first]}, "routes": routes}
        plans = {"routed": settings_for(kafka_bootstrap, bundle, **topics, **extra)}
    else:
        plans = {
            group: settings_for(
                kafka_bootstrap, bundle, **topics, input=group_input(group, bundles)
            )
            for group, bundle in bundles.items()
        }
    figures: dict[str, dict[str, float]] = {}
    async with AsyncExitStack() as stack:
        services = {name: await stack.enter_async_context(running(s)) for name, s in plans.items()}
        for name, service in services.items():
            await wait_consumed(service, readings, produced)
            figures[name] = {
                result: sample(service, "plantwatch_readings_total", {"result": result})
                for result in ("ok", "other_asset", "invalid")
            }
            figures[name]["produced"] = produced
            figures[name]["scored"] = sample(service, "plantwatch_windows_scored_total")
    return await read_alerts(kafka_bootstrap, alerts), figures


def _fault_stream() -> PlantSimulator:
    """4 hours of day 2 with one fault of each kind."""
    return PlantSimulator(
        PlantConfig(
            **PLANT,
            start="2026-01-02T00:00:00Z",
            duration_s=4 * 3600,
            n_faults=len(FAULT_KINDS),
            seed=21,
        )
    )


def _match(events: list, sim: PlantSimulator) -> tuple[set, int, list[str]]:
    """The faults an opened alert names (on their asset, from their start to 32 s after their
    end), how many alerts name none, and a printable report."""
    opened = [e for e in events if e.event is EventType.OPENED]
    report = [f"{len(opened)} alerts opened, {len(events)} events"]
    matched = set()
    false_alerts = 0
    for e in opened:
        hit = [
            f
            for f in sim.faults
            if f.asset == e.asset and f.start_ms <= e.start_ts_ms <= f.end_ms + 32_000
        ]
        if hit:
            matched.add(hit[0])
            names = {s.sensor for s in e.top_sensors}
            report.append(f"  {e.asset} {hit[0].kind}: top {sorted(names)}")
            if hit[0].kind in CLEAR_FAULTS:
                assert names & set(hit[0].sensors), report
        else:
            false_alerts += 1
            faults = [f"{f.kind} on {f.asset} at {f.start_ms}-{f.end_ms}" for f in sim.faults]
            top = [s.sensor for s in e.top_sensors]
            report.append(f"  false: {e.asset} at {e.start_ts_ms}, top {top}; faults: {faults}")
    report.append(f"false alerts: {false_alerts}")
    return matched, false_alerts, report


async def test_faults_raise_alerts_on_the_right_assets(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    sim = _fault_stream()
    events, figures = await _monitor(kafka_bootstrap, new_topic, plant_bundle, sim)
    assert figures["ok"] == figures["produced"]
    # Every reading after each asset's first full window was scored.
    assert figures["scored"] == figures["produced"] - 31 * len(sim.assets)
    # Every batch decoded and appended (several per commit); scoring and detection ran in some.
    batches = figures["batches_commit"]
    assert batches > 0
    assert figures["batches_decode"] == figures["batches_windows"] >= batches
    assert 0 < figures["batches_score"] == figures["batches_detect"] <= figures["batches_decode"]

    matched, false_alerts, report = _match(events, sim)
    print("\n".join(report))
    for fault in sim.faults:
        if fault.kind in CLEAR_FAULTS:
            assert fault in matched, f"{fault.kind} on {fault.asset} raised no alert\n{report}"
    assert false_alerts <= 1, report
    # Events are well formed: each alert opens once, and resolves at most once, last.
    assert_alert_sequences(events)


async def test_a_start_up_hold_keeps_the_bias_check_from_false_alerts(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle_bias: Path
) -> None:
    """The bias check (training.bias) finds offsets the squared error misses, and without a hold
    it also alerted twice as pumps restarted after long stops (bench/results/detection.md,
    session 13); held while a pump is stopped and for 10 minutes after, it does not."""
    sim = _fault_stream()
    hold = {"sensor": "motor_current", "running_above": 1.0, "seconds": 600}
    events, figures = await _monitor(
        kafka_bootstrap, new_topic, plant_bundle_bias, sim, detector={"hold": hold}
    )
    matched, false_alerts, report = _match(events, sim)
    print("\n".join(report) + f"\nheld windows: {figures['held']:.0f}")
    # Two pumps stop for about half an hour each: their windows then are held (and counted).
    assert 3000 < figures["held"] < 0.1 * figures["scored"], figures
    for fault in sim.faults:
        if fault.kind in (*CLEAR_FAULTS, "leak"):
            assert fault in matched, f"{fault.kind} on {fault.asset} raised no alert\n{report}"
    assert false_alerts == 0, report
    assert_alert_sequences(events)


async def test_a_service_per_kind_of_machine_on_one_topic(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundles_by_group: dict[str, Path]
) -> None:
    """The fault stream through a pump service and a compressor service side by side, each with
    the bundle trained on its kind (bench/results/detection.md, session 14); then through one
    service with a route per kind (Settings.routes), which must raise the very same events."""
    sim = _fault_stream()
    events, figures = await _monitor_by_group(
        kafka_bootstrap, new_topic, plant_bundles_by_group, sim
    )
    # Every reading is scored by exactly one service and passed over by the other.
    produced = figures["pump-*"]["produced"]
    assert figures["pump-*"]["ok"] + figures["compressor-*"]["ok"] == produced, figures
    for group in figures.values():
        assert group["ok"] + group["other_asset"] == produced, figures
        assert group["invalid"] == 0
    matched, false_alerts, report = _match(events, sim)
    print("\n".join(report))
    # Measured: all six faults, no false alert (one bundle for the plant: 4 of 6). The leak and
    # the valve step are what the plant-wide scaler hid.
    for fault in sim.faults:
        if fault.kind in (*CLEAR_FAULTS, "leak", "valve_step"):
            assert fault in matched, f"{fault.kind} on {fault.asset} raised no alert\n{report}"
    assert false_alerts <= 1, report
    assert_alert_sequences(events)

    # The same plant through one service with a route per kind: the same alert events.
    routed, by_service = await _monitor_by_group(
        kafka_bootstrap, new_topic, plant_bundles_by_group, sim, routed=True
    )
    together = by_service["routed"]
    assert together["ok"] == produced, together
    assert together["other_asset"] == together["invalid"] == 0, together
    assert together["scored"] == produced - 31 * len(sim.assets), together
    assert _events(routed) == _events(events)


def _events(events: list) -> list[tuple]:
    """The events in a comparable order, with what defines them."""
    return sorted((e.event_id, e.asset, e.ts_ms, e.severity.value, e.score) for e in events)


async def test_normal_stream_raises_no_alerts(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundle: Path
) -> None:
    sim = PlantSimulator(
        PlantConfig(**PLANT, start="2026-01-03T00:00:00Z", duration_s=4 * 3600, n_faults=0, seed=22)
    )
    events, figures = await _monitor(kafka_bootstrap, new_topic, plant_bundle, sim)
    opened = [e for e in events if e.event is EventType.OPENED]
    print(f"\nnormal stream: {figures['scored']:.0f} windows scored, {len(opened)} alerts opened")
    assert figures["scored"] > 0
    assert len(opened) <= 1


async def test_normal_stream_raises_no_alerts_with_a_service_per_kind(
    kafka_bootstrap: str, new_topic: NewTopic, plant_bundles_by_group: dict[str, Path]
) -> None:
    """Each kind's bundle has a narrower scaler than the plant's: normal operation of another day
    must still stay quiet."""
    sim = PlantSimulator(
        PlantConfig(**PLANT, start="2026-01-03T00:00:00Z", duration_s=4 * 3600, n_faults=0, seed=22)
    )
    events, figures = await _monitor_by_group(
        kafka_bootstrap, new_topic, plant_bundles_by_group, sim
    )
    opened = [e for e in events if e.event is EventType.OPENED]
    scored = sum(g["ok"] for g in figures.values())
    print(f"\nnormal stream, a service per kind: {scored:.0f} readings, {len(opened)} alerts")
    assert scored == figures["pump-*"]["produced"]
    assert len(opened) <= 1
