"""Fixtures for tests against a real Kafka broker.

``kafka_bootstrap`` uses ``$KAFKA_BOOTSTRAP_SERVERS`` when set, else the local broker managed by
``deploy/local/kafka.py`` (started here if installed but stopped, and left running for the next
session). A missing or broken broker fails the tests; it never skips them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code

log = logging.getLogger(__name__)

LOCAL_KAFKA_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "kafka.py"
TOPIC_READY_TIMEOUT_S = 30.0

NewTopicFactory = Callable[..., Awaitable[str]]


def load_local_kafka() -> ModuleType:
    """Import ``deploy/local/kafka.py`` by path (it is a script, not part of the package)."""
    name = "plantwatch_local_kafka"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, LOCAL_KAFKA_SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {LOCAL_KAFKA_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of a running broker, e.g. ``"127.0.0.1:9092"``."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        return configured
    local_kafka = load_local_kafka()
    try:
        cluster = local_kafka.LocalKafka.from_env()
        if not cluster.is_installed():
            pytest.fail(
                f"local Kafka is not installed in {cluster.home}: run "
                "`python3 deploy/local/kafka.py install` (or set KAFKA_BOOTSTRAP_SERVERS)",
                pytrace=False,
            )
        cluster.start()
    except local_kafka.LocalKafkaError as exc:
        pytest.fail(f"local Kafka broker unavailable: {exc}", pytrace=False)
    bootstrap: str = cluster.bootstrap_servers
    return bootstrap


@pytest.fixture
async def new_topic(
    kafka_bootstrap: str, request: pytest.FixtureRequest
) -> AsyncIterator[NewTopicFactory]:
    """``await new_topic(partitions=3) -> str``: a fresh topic, deleted after the test.

    The name carries the test's name for readable broker logs. Returns only once every
    partition has a leader, so producers and consumers need no retry dance.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []
    stem = re.sub(r"[^A-Za-z0-9-]+", "-", request.node.name).strip("-")[:100]

    async def create(partitions: int = 3, replication_factor: int = 1) -> str:
        name = f"test-{stem}-{uuid.uuid4().hex[:8]}"
        response = await admin.create_topics([NewTopic(name, partitions, replication_factor)])
        for topic, error_code, *message in response.topic_errors:
            if error_code:
                raise for_code(error_code)(f"creating topic {topic}: {message}")
        created.append(name)
        await _wait_for_leaders(admin, name, partitions)
        return name

    try:
        yield create
    finally:
        try:
            if created:
                await admin.delete_topics(created)
        except KafkaError as exc:  # cleanup only: the names are unique anyway
            log.warning("could not delete test topics %s: %r", created, exc)
        finally:
            await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    async with asyncio.timeout(TOPIC_READY_TIMEOUT_S):
        while True:
            (described,) = await admin.describe_topics([topic])
            leaders = [p["leader"] for p in described["partitions"] if p["error_code"] == 0]
            if described["error_code"] == 0 and len(leaders) == partitions and min(leaders) >= 0:
                return
            await asyncio.sleep(0.1)
