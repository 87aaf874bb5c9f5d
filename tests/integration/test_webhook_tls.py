"""Webhook mutual TLS through the delivery consumer: real Kafka, a real HTTPS receiver on
127.0.0.1 that requires client certificates from its own CA, and the ``notify`` command."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.config import Settings
from monitor.sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from tests.certs import WebhookPki, server_context, webhook_pki
from tests.integration.test_notify import (
    NewTopicFactory,
    make_events,
    produce_events,
    read_all,
    running,
    sample,
    wait_for,
)

pytestmark = pytest.mark.kafka

SECRET = "tls-hook-secret-31"
KEY_PASSWORD = "client-key-pw-never-logged-58"
PLANTWATCH = str(Path(sys.executable).with_name("plantwatch"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> WebhookPki:
    return webhook_pki(tmp_path_factory.mktemp("hook-pki"), KEY_PASSWORD)


@asynccontextmanager
async def https_receiver(pki: WebhookPki, keys: list[str]) -> AsyncIterator[str]:
    """Accepts a post only with a valid HMAC signature, over a client-authenticated TLS link."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        ):
            return web.Response(status=401)
        keys.append(request.headers[IDEMPOTENCY_HEADER])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(pki)).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


def delivery(
    bootstrap: str, topic: str, dlq: str, url: str, tls: dict[str, Any], *, max_attempts: int
) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap},
        "model": {"path": "/nonexistent-bundle"},
        "alerts": {"topic": topic},
        "delivery": {
            "group_id": f"{topic}-notify",
            "dead_letter_topic": dlq,
            "max_attempts": max_attempts,
            "initial_backoff_s": 0.05,
            "max_backoff_s": 0.2,
            "webhooks": [
                {"name": "ops", "url": url, "secret": SECRET, "timeout_s": 2.0, "tls": tls}
            ],
        },
        "shutdown_deadline_s": 10.0,
    }


async def test_mutual_tls_delivery(
    kafka_bootstrap: str, new_topic: NewTopicFactory, pki: WebhookPki
) -> None:
    topic, dlq = await new_topic(partitions=2), await new_topic(partitions=1)
    events = make_events(5)
    await produce_events(kafka_bootstrap, topic, events)
    keys: list[str] = []
    registry = CollectorRegistry()
    tls = {
        "ca_file": str(pki.ca),
        "client_cert": str(pki.client_encrypted.cert),
        "client_key": str(pki.client_encrypted.key),
        "client_key_password": KEY_PASSWORD,
    }
    async with https_receiver(pki, keys) as url:
        config = Settings.model_validate(
            delivery(kafka_bootstrap, topic, dlq, url, tls, max_attempts=5)
        )
        async with running(config, registry):
            await wait_for(lambda: set(keys) == {e.event_id for e in events}, "all delivered")
    ok = {"endpoint": "ops", "result": "ok"}
    assert sample(registry, "plantwatch_webhook_deliveries_total", ok) == len(events)
    assert sample(registry, "plantwatch_webhook_deliveries_total", {**ok, "result": "retry"}) == 0


async def test_without_client_certificate_events_are_retried_then_parked(
    kafka_bootstrap: str,
    new_topic: NewTopicFactory,
    pki: WebhookPki,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    topic, dlq = await new_topic(partitions=1), await new_topic(partitions=1)
    (event,) = make_events(1)
    await produce_events(kafka_bootstrap, topic, [event])
    keys: list[str] = []
    registry = CollectorRegistry()
    async with https_receiver(pki, keys) as url:
        # Trusts the receiver, but shows no client certificate.
        config = Settings.model_validate(
            delivery(kafka_bootstrap, topic, dlq, url, {"ca_file": str(pki.ca)}, max_attempts=3)
        )
        async with running(config, registry):
            (parked,) = await read_all(kafka_bootstrap, dlq, 1)
    assert keys == []
    doc = json.loads(parked.value)
    assert doc["reason"] == "delivery_failed"
    assert doc["attempts"] == 3
    assert doc["event_id"] == event.event_id
    assert "ECONNRESET" in doc["last_error"] or "TLS" in doc["last_error"], doc["last_error"]
    retry = {"endpoint": "ops", "result": "retry"}
    assert sample(registry, "plantwatch_webhook_deliveries_total", retry) == 2
    assert (
        sample(registry, "plantwatch_webhook_deliveries_total", {**retry, "result": "parked"}) == 1
    )
    (line,) = [r.getMessage() for r in caplog.records if "parked event" in r.getMessage()]
    print(f"\n{line}")
    assert line.startswith(f"webhook ops: parked event {event.event_id} on {dlq} after 3 attempt")
    assert "delivery_failed" in line
    assert "client certificate" in line or "TLS" in line, line
    assert SECRET not in caplog.text
    assert SECRET not in parked.value.decode()


@pytest.mark.parametrize("fault", ["missing cert", "wrong password"])
def test_notify_with_bad_tls_files_fails_at_start_in_one_line(
    kafka_bootstrap: str, pki: WebhookPki, tmp_path: Path, fault: str
) -> None:
    tls: dict[str, Any] = {
        "ca_file": str(pki.ca),
        "client_cert": str(pki.client_encrypted.cert),
        "client_key": str(pki.client_encrypted.key),
        "client_key_password": KEY_PASSWORD,
    }
    if fault == "missing cert":
        tls["client_cert"] = str(tmp_path / "no-such-client.pem")
        expected = f"tls.client_cert {tmp_path}/no-such-client.pem: cannot read"
    else:
        tls["client_key_password"] = "wrong-" + KEY_PASSWORD
        expected = "cannot decrypt the key (wrong client_key_password?)"
    doc = delivery(kafka_bootstrap, "t", "d", "https://127.0.0.1:9/hook", tls, max_attempts=1)
    doc["http"] = {"host": "127.0.0.1", "port": 0}
    config = tmp_path / "notify.yaml"
    config.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [PLANTWATCH, "notify", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    print(f"\n{fault}: exit {result.returncode}: {last}")
    assert result.returncode == 2, output[-2000:]
    assert last.startswith("plantwatch notify: error: delivery.webhooks ops: tls."), last
    assert expected in last, last
    assert "Traceback" not in output
    assert KEY_PASSWORD not in output
    assert "Unclosed" not in output
