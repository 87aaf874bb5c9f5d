"""A private Kafka broker for tests that stop it or need SASL/TLS.

The shared broker (``kafka_bootstrap``) serves every other test, so it is never stopped or
reconfigured. This one runs from the same verified install (``deploy/local/kafka.py``) with its
own home (data, config, logs, TLS material) and free ports, and opens three listeners:
PLAINTEXT (admin work in tests), SASL_PLAINTEXT and SASL_SSL (PLAIN, SCRAM-SHA-256/512).
Anything missing (install, Java, keytool, openssl) fails the test, never skips it.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from tests.integration.conftest import load_local_kafka

USER = "alice"
#: Distinctive so that a test can assert it never appears in any output.
PASSWORD = "pw-Zq7-never-logged-41"


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@contextmanager
def own_kafka(home: Path) -> Iterator[Any]:
    """A started private cluster (a ``LocalKafka``); stopped, both processes, on exit."""
    lk = load_local_kafka()
    shared = lk.LocalKafka.from_env({k: v for k, v in os.environ.items() if k == lk.ENV_HOME})
    if not shared.is_installed():
        pytest.fail(
            f"Kafka is not installed in {shared.home}: run `python3 deploy/local/kafka.py "
            "install` (the private test broker reuses that install)",
            pytrace=False,
        )
    kafka_port, zk_port, sasl_port, ssl_port = free_ports(4)
    cluster = lk.LocalKafka(
        home=home,
        kafka_port=kafka_port,
        zk_port=zk_port,
        dist_home=shared.home,
        sasl_port=sasl_port,
        sasl_ssl_port=ssl_port,
        sasl_users=((USER, PASSWORD),),
        start_timeout_s=90.0,
    )
    try:
        cluster.start()
    except lk.LocalKafkaError as exc:
        cluster.stop()
        pytest.fail(f"private Kafka broker did not start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def secure_kafka(cluster: Any, protocol: str, mechanism: str, password: str = PASSWORD) -> dict:
    """The ``kafka:`` settings section for one of the private broker's SASL listeners."""
    doc: dict[str, Any] = {
        "bootstrap_servers": cluster.listener(protocol),
        "security_protocol": protocol,
        "sasl_mechanism": mechanism,
        "sasl_username": USER,
        "sasl_password": password,
    }
    if protocol == "SASL_SSL":
        doc["ssl_cafile"] = str(cluster.ca_file)
    return doc


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    """Create ``{name: partitions}`` and wait until every partition has a leader."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics([NewTopic(n, p, 1) for n, p in topics.items()])
        for topic, error_code, *message in response.topic_errors:
            if error_code:
                raise for_code(error_code)(f"creating topic {topic}: {message}")
        async with asyncio.timeout(30):
            for name, partitions in topics.items():
                while True:
                    (described,) = await admin.describe_topics([name])
                    leaders = [p["leader"] for p in described["partitions"]]
                    if len(leaders) == partitions and min(leaders, default=-1) >= 0:
                        break
                    await asyncio.sleep(0.1)
    finally:
        await admin.close()
