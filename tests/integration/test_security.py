"""SASL (PLAIN, SCRAM-SHA-256/512) and TLS against a private broker, with real processes.

``serve`` and ``notify`` authenticate end to end (readings in over SASL_SSL, scores and alerts
out, webhook delivered); wrong credentials or an untrusted broker certificate end the command at
start with exit status 2 and one clear line, and the password never appears in any output.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer

from monitor.bundle import MANIFEST_FILE
from monitor.config import KafkaSettings
from monitor.kafka import client_kwargs
from monitor.sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from tests.certs import self_signed_ca
from tests.harness import read_topic
from tests.own_kafka import PASSWORD, create_topics, own_kafka, secure_kafka

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PLANTWATCH = str(Path(sys.executable).with_name("plantwatch"))
HOOK_SECRET = "hook-secret-9f"
START_MS = 1_767_225_600_000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with own_kafka(tmp_path_factory.mktemp("secure-kafka")) as started:
        yield started


@pytest.fixture
def eager_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """The tiny bundle with a threshold so low that every window is anomalous: alerts for sure."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    doc = json.loads((bundle / MANIFEST_FILE).read_text())
    doc["threshold"]["value"] = 1e-9
    (bundle / MANIFEST_FILE).write_text(json.dumps(doc))
    return bundle


def _config(
    tmp_path: Path, name: str, kafka: dict[str, Any], bundle: Path, **sections: Any
) -> Path:
    doc: dict[str, Any] = {
        "kafka": kafka,
        "model": {"path": str(bundle), "device": "cpu", "reload": "off"},
        "detector": {"k": 2, "n": 3, "m": 3},
        "http": {"host": "127.0.0.1", "port": 0},
        "instance_id": name,
        "shutdown_deadline_s": 10,
        **sections,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if not k.startswith(("PLANTWATCH_", "KAFKA_BOOTSTRAP"))
    }


def _popen(command: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [PLANTWATCH, command, "--config", str(config)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=_env(),
        )


def _readings(assets: list[str], steps: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(steps):
        base = math.sin(2 * math.pi * i / 50.0)
        values = {"a": base, "b": 2 * base + 10, "c": math.cos(2 * math.pi * i / 50.0)}
        for asset in assets:
            doc = {"asset": asset, "ts": START_MS + 1000 * i, "values": values}
            out.append((asset.encode(), json.dumps(doc).encode()))
    return out


@asynccontextmanager
async def _receiver(keys: list[str]) -> AsyncIterator[str]:
    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(
            HOOK_SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        if not ok:
            return web.Response(status=401)
        keys.append(request.headers[IDEMPOTENCY_HEADER])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


async def test_serve_and_notify_authenticate_over_sasl_ssl_and_sasl_plaintext(
    cluster: Any, eager_bundle: Path, tmp_path: Path
) -> None:
    plain = cluster.listener("PLAINTEXT")
    topics = {"sec.readings": 2, "sec.alerts": 1, "sec.dlq": 1, "sec.scores": 1, "sec.ddlq": 1}
    await create_topics(plain, topics)
    common = {
        "input": {"topics": ["sec.readings"], "group_id": "sec", "dead_letter_topic": "sec.dlq"},
        "alerts": {"topic": "sec.alerts"},
    }
    serve_cfg = _config(
        tmp_path,
        "serve-sec",
        secure_kafka(cluster, "SASL_SSL", "SCRAM-SHA-512"),
        eager_bundle,
        scores={"topic": "sec.scores"},
        delivery={"enabled": False},
        **common,
    )
    keys: list[str] = []
    async with _receiver(keys) as url:
        notify_cfg = _config(
            tmp_path,
            "notify-sec",
            secure_kafka(cluster, "SASL_PLAINTEXT", "PLAIN"),
            eager_bundle,
            delivery={
                "group_id": "sec-notify",
                "dead_letter_topic": "sec.ddlq",
                "webhooks": [{"name": "hook", "url": url, "secret": HOOK_SECRET}],
            },
            **common,
        )
        log = tmp_path / "processes.log"
        procs = [_popen("serve", serve_cfg, log), _popen("notify", notify_cfg, log)]
        try:
            # Readings go in over a third combination: SCRAM-SHA-256 on the TLS listener.
            producer_settings = KafkaSettings(**secure_kafka(cluster, "SASL_SSL", "SCRAM-SHA-256"))
            async with AIOKafkaProducer(**client_kwargs(producer_settings), acks="all") as prod:
                sent = [
                    await prod.send("sec.readings", value=v, key=k)
                    for k, v in _readings(["unit-1", "unit-2"], 30)
                ]
                await asyncio.gather(*sent)
            deadline = time.monotonic() + 60
            while len(set(keys)) < 2 and time.monotonic() < deadline:
                assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
                await asyncio.sleep(0.5)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = [await asyncio.to_thread(proc.wait, 30) for proc in procs]
    output = log.read_text()
    assert codes == [0, 0], output[-3000:]
    scores = await read_topic(plain, "sec.scores")
    alerts = await read_topic(plain, "sec.alerts")
    scored = sum(len(json.loads(r.value)["ts"]) for r in scores)
    # 30 readings per asset, window 16: 15 scored windows per asset.
    assert scored == 2 * 15, scored
    on_topic = {json.loads(r.value)["event_id"] for r in alerts}
    # Every webhook delivery is an alert event serve committed, for both assets.
    assert len(set(keys)) >= 2, keys
    assert set(keys) <= on_topic, (keys, on_topic)
    assert PASSWORD not in output
    print(f"\nsecure end to end: {scored} windows scored, {len(alerts)} alert events, "
          f"{len(set(keys))} delivered over SASL")  # fmt: skip


@pytest.mark.parametrize(
    ("command", "protocol", "mechanism", "fault", "message"),
    [
        ("serve", "SASL_SSL", "SCRAM-SHA-512", "password", "rejected user 'alice'"),
        ("serve", "SASL_PLAINTEXT", "PLAIN", "password", "rejected user 'alice'"),
        ("notify", "SASL_PLAINTEXT", "SCRAM-SHA-256", "password", "rejected user 'alice'"),
        ("serve", "SASL_SSL", "SCRAM-SHA-512", "ca", "TLS handshake with Kafka"),
    ],
)
def test_bad_credentials_or_untrusted_broker_fail_at_start_in_one_line(
    cluster: Any,
    eager_bundle: Path,
    tmp_path: Path,
    command: str,
    protocol: str,
    mechanism: str,
    fault: str,
    message: str,
) -> None:
    wrong = "wrong-" + PASSWORD[::-1]
    password = wrong if fault == "password" else PASSWORD
    kafka = secure_kafka(cluster, protocol, mechanism, password=password)
    if fault == "ca":
        kafka["ssl_cafile"] = str(self_signed_ca(tmp_path, "not-the-broker-ca")[0])
    config = _config(
        tmp_path,
        f"{command}-bad",
        kafka,
        eager_bundle,
        delivery={"webhooks": [{"name": "hook", "url": "http://127.0.0.1:9/hook"}]},
    )
    began = time.monotonic()
    result = subprocess.run(
        [PLANTWATCH, command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    took = time.monotonic() - began
    output = result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, output[-2000:]
    assert last.startswith(f"plantwatch {command}: error: "), last
    assert message in last, last
    assert "Traceback" not in output
    assert PASSWORD not in output
    assert wrong not in output
    assert took < 30, f"failing took {took:.1f}s"
    print(f"\n{command} {protocol}/{mechanism} bad {fault}: exit 2 in {took:.1f}s: {last}")
