"""Helpers for tests that run the monitor against the real local Kafka broker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.events import AlertEvent, EventType
from monitor.kafka import read_topic
from monitor.service import Service


def settings_for(
    bootstrap: str, bundle: Path, *, readings: str, alerts: str, dead_letter: str, **extra: Any
) -> Settings:
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap},
        "input": {
            "topics": [readings],
            "group_id": f"pw-test-{uuid.uuid4().hex[:8]}",
            "dead_letter_topic": dead_letter,
            "fetch_timeout_ms": 50,
        },
        "model": {"path": str(bundle), "device": "cpu", "reload": "off"},
        "alerts": {"topic": alerts},
        "delivery": {"enabled": False},
        "http": {"host": "127.0.0.1", "port": 0},
        "instance_id": f"test-{uuid.uuid4().hex[:8]}",
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            doc.setdefault(section, {}).update(values)
        else:
            doc[section] = values
    return Settings.model_validate(doc)


def group_input(group: str, groups: Iterable[str]) -> dict[str, list[str]]:
    """``input`` settings of the service for the assets ``group`` matches, beside services for
    the other ``groups`` on the same readings topic."""
    return {"asset_patterns": [group], "other_asset_patterns": [g for g in groups if g != group]}


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """A started service consuming in a background task; stopped gracefully on exit."""
    service = Service(settings, registry=CollectorRegistry())
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        yield service
    finally:
        service.request_stop()
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            await service.stop()
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def sample(service: Service, name: str, labels: dict[str, str] | None = None) -> float:
    value = service.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def wait_for(
    predicate: Callable[[], bool], *, within: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_consumed(service: Service, topic: str, messages: int, within: float = 120) -> None:
    await wait_for(
        lambda: sample(service, "plantwatch_messages_total", {"topic": topic}) >= messages,
        within=within,
        what=f"{messages} messages of {topic} to be consumed",
    )


async def read_alerts(bootstrap: str, topic: str) -> list[AlertEvent]:
    return [AlertEvent.from_json(r.value) for r in await read_topic(bootstrap, topic)]


PLANTWATCH = str(Path(sys.executable).with_name("plantwatch"))


def start_serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``plantwatch serve --config`` as a real process (JSON logs appended to ``log``).

    ``PLANTWATCH_*`` variables of the test environment are dropped so only ``config`` counts.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLANTWATCH_")}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [PLANTWATCH, "--log-format", "json", "serve", "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
        )


def assert_alert_sequences(events: list[AlertEvent]) -> None:
    """Alert events are well formed: ids unique; each alert opens once (seq 0), counts up, and
    resolves at most once, last."""
    assert len({e.event_id for e in events}) == len(events)
    by_id: dict[str, list[AlertEvent]] = {}
    for e in events:
        by_id.setdefault(e.alert_id, []).append(e)
    for seq in by_id.values():
        assert seq[0].event is EventType.OPENED
        assert [e.seq for e in seq] == list(range(len(seq)))
        assert all(e.event is not EventType.RESOLVED for e in seq[:-1])
