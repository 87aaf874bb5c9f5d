"""A stop cancels the service's background tasks and waits for them: each must end on it,
even when what it was waiting for arrives just before the cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from monitor.config import Settings
from monitor.model import ModelManager
from monitor.service import Service


async def _ends_when_cancelled_as_it_wakes(
    start: Callable[[], Coroutine[Any, Any, None]], wake: Callable[[], Any]
) -> None:
    """Start a task, let it wait, ``wake`` it and cancel it 0 to 7 loop iterations later
    (so once between the end of what it awaited and its own resumption): it must end."""
    for turns in range(8):
        task = asyncio.create_task(start())
        for _ in range(8):  # the task now waits, as deep down as it goes
            await asyncio.sleep(0)
        wake()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, f"still running 5 s after a cancellation {turns} turns after waking"
        assert task.cancelled()


class _Consumer:
    """Answers the broker probe when the test says so."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[set[str]] | None = None

    async def topics(self) -> set[str]:
        self.answer = asyncio.get_running_loop().create_future()
        return await self.answer

    def assignment(self) -> set[TopicPartition]:
        return set()


async def test_the_broker_probe_ends_when_cancelled_as_its_check_completes(
    tmp_path: Path,
) -> None:
    # Python 3.11's asyncio.wait_for returns the inner call's result when it completed just
    # before the cancellation, swallowing it: the probe slept and probed on, and stop() waited
    # for it until the shutdown deadline killed the process (tests/integration/
    # test_scaleout.py failed so about once in twenty runs).
    service = Service(Settings.model_validate({"model": {"path": str(tmp_path)}}))
    consumer = _Consumer()
    service._consumer = consumer  # type: ignore[assignment]

    def answer() -> None:
        assert consumer.answer is not None
        consumer.answer.set_result(set())

    await _ends_when_cancelled_as_it_wakes(service._probe_broker, answer)


async def test_the_reload_watch_ends_when_cancelled_as_a_reload_is_requested(
    tmp_path: Path,
) -> None:
    manager = ModelManager(tmp_path, device="cpu", threads=1)
    await _ends_when_cancelled_as_it_wakes(
        lambda: manager.watch(3600.0, poll=False), manager.request_reload
    )
