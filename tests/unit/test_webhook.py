"""Webhook payloads, signatures, backoff and retries, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from monitor.config import WebhookSettings
from monitor.events import AlertEvent, EventType, ModelRef, SensorShare, Severity
from monitor.metrics import Metrics
from monitor.sinks.webhook import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Outcome,
    RetryPolicy,
    Verdict,
    WebhookSender,
    alertmanager_payload,
    build_payload,
    classify_status,
    describe_error,
    format_top_sensors,
    iso_utc,
    json_payload,
    retry_after_s,
    sign,
    signature_headers,
    verify_signature,
)

SECRET = "s3cret-value"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_event(
    *, kind: EventType = EventType.OPENED, seq: int = 0, asset: str = "pump-7"
) -> AlertEvent:
    resolved = kind is EventType.RESOLVED
    return AlertEvent(
        alert_id="a1b2c3d4e5f6a7b8c9d0",
        seq=seq,
        event=kind,
        asset=asset,
        start_ts_ms=START_MS,
        end_ts_ms=START_MS + 90_500 if resolved else None,
        ts_ms=START_MS + 90_500 if resolved else START_MS + 5_000,
        score=3.25,
        peak_score=4.5,
        threshold=1.25,
        severity=Severity.MAJOR,
        top_sensors=(SensorShare("vibration_rms", 0.62), SensorShare("bearing_temp", 0.21)),
        model=ModelRef("pump-ae", "3", "ab" * 32),
    )


def sample(registry: CollectorRegistry, endpoint: str, result: str) -> float:
    value = registry.get_sample_value(
        "plantwatch_webhook_deliveries_total", {"endpoint": endpoint, "result": result}
    )
    return value or 0.0


# --- payloads ---------------------------------------------------------------------------------


def test_json_payload_is_the_event_document() -> None:
    event = make_event()
    doc = json.loads(json_payload(event))
    assert doc == json.loads(json.dumps(event.to_dict()))
    assert doc["event_id"] == event.event_id
    assert AlertEvent.from_json(json_payload(event)) == event
    assert build_payload(event, "json") == json_payload(event)


def test_alertmanager_payload_open() -> None:
    event = make_event()
    alerts = json.loads(alertmanager_payload(event))
    assert isinstance(alerts, list)
    assert len(alerts) == 1
    (alert,) = alerts
    assert alert["labels"] == {
        "alertname": "PlantwatchAnomaly",
        "asset": "pump-7",
        "severity": "major",
        "alert_id": event.alert_id,
        "model": "pump-ae",
    }
    ann = alert["annotations"]
    assert ann["top_sensors"] == "vibration_rms 62%, bearing_temp 21%"
    assert ann["event_id"] == event.event_id
    assert ann["score"] == "3.25"
    assert ann["threshold"] == "1.25"
    assert "pump-7" in ann["summary"]
    assert "vibration_rms 62%" in ann["description"]
    # Alertmanager rejects non-string label and annotation values.
    assert all(isinstance(v, str) for v in [*alert["labels"].values(), *ann.values()])
    assert alert["startsAt"] == "2026-01-01T00:00:00.000Z"
    assert "endsAt" not in alert
    assert "generatorURL" not in alert
    assert build_payload(event, "alertmanager") == alertmanager_payload(event)


def test_alertmanager_payload_resolved_has_ends_at() -> None:
    event = make_event(kind=EventType.RESOLVED, seq=3)
    (alert,) = json.loads(alertmanager_payload(event, generator_url="http://grafana/d/x"))
    assert alert["startsAt"] == "2026-01-01T00:00:00.000Z"
    assert alert["endsAt"] == "2026-01-01T00:01:30.500Z"
    assert alert["generatorURL"] == "http://grafana/d/x"
    assert alert["annotations"]["event_id"] == f"{event.alert_id}:3:resolved"
    # Labels match the opening event's, so Alertmanager resolves the same alert.
    (opened,) = json.loads(alertmanager_payload(make_event()))
    assert alert["labels"] == opened["labels"]


def test_format_top_sensors() -> None:
    assert format_top_sensors(()) == ""
    assert format_top_sensors((SensorShare("a", 1.0),)) == "a 100%"
    assert format_top_sensors((SensorShare("x", 0.505), SensorShare("y", 0.004))) == "x 50%, y 0%"


def test_iso_utc() -> None:
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert iso_utc(START_MS + 123) == "2026-01-01T00:00:00.123Z"


def test_unknown_format_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown webhook format"):
        build_payload(make_event(), "xml")


# --- signatures -------------------------------------------------------------------------------


def test_signature_roundtrip() -> None:
    body = json_payload(make_event())
    now = 1_767_225_600.0
    headers = signature_headers(SECRET, body, now=now)
    assert headers[TIMESTAMP_HEADER] == "1767225600"
    assert headers[SIGNATURE_HEADER].startswith("sha256=")
    assert len(headers[SIGNATURE_HEADER]) == len("sha256=") + 64
    ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert verify_signature(SECRET, ts, body, sig, now=now)
    assert verify_signature(SECRET.encode(), int(ts), body, sig, now=now + 299)


def test_signature_known_vector() -> None:
    # hmac.new(b"key", b"1700000000.{}", sha256): fixes the scheme for receivers in other languages.
    import hashlib
    import hmac

    expected = hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("key", 1_700_000_000, b"{}") == f"sha256={expected}"


def test_signature_rejects_tampering_wrong_secret_and_staleness() -> None:
    body = b'{"event_id":"x:0:opened"}'
    now = 1_767_225_600.0
    ts = int(now)
    sig = sign(SECRET, ts, body)
    assert not verify_signature(SECRET, ts, body + b" ", sig, now=now)
    assert not verify_signature(SECRET, ts, body.replace(b"x", b"y"), sig, now=now)
    assert not verify_signature("other-secret", ts, body, sig, now=now)
    assert not verify_signature(SECRET, ts + 1, body, sig, now=now)  # timestamp is signed too
    assert not verify_signature(SECRET, ts, body, sig, now=now + 301)
    assert not verify_signature(SECRET, ts, body, sig, now=now - 301)
    assert verify_signature(SECRET, ts, body, sig, now=now + 10, tolerance_s=10)
    assert not verify_signature(SECRET, ts, body, sig, now=now + 11, tolerance_s=10)
    assert not verify_signature(SECRET, "not-a-number", body, sig, now=now)
    assert not verify_signature(SECRET, ts, body, sig.removeprefix("sha256="), now=now)
    assert not verify_signature(SECRET, ts, body, "sha1=" + sig[7:], now=now)


# --- backoff and classification -----------------------------------------------------------------


@given(
    retry=st.integers(min_value=0, max_value=2000),
    initial=st.floats(min_value=0.001, max_value=10),
    maximum=st.floats(min_value=0.001, max_value=600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_full_jitter_within_bounds(
    retry: int, initial: float, maximum: float, seed: int
) -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=initial, max_backoff_s=maximum)
    cap = policy.cap(retry)
    assert cap == pytest.approx(min(maximum, initial * 2.0 ** min(retry, 64)))
    delay = policy.delay(retry, random.Random(seed))
    assert 0.0 <= delay <= cap


def test_backoff_schedule_grows_then_caps() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff_s=0.5, max_backoff_s=5.0)
    assert [policy.cap(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    rng = random.Random(1)
    delays = [policy.delay(3, rng) for _ in range(2000)]
    # Full jitter spreads over the whole range rather than clustering near the cap.
    assert min(delays) < 0.4
    assert max(delays) > 3.6


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.OK),
        (201, Verdict.OK),
        (204, Verdict.OK),
        (301, Verdict.REJECT),
        (400, Verdict.REJECT),
        (401, Verdict.REJECT),
        (404, Verdict.REJECT),
        (413, Verdict.REJECT),
        (422, Verdict.REJECT),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (500, Verdict.RETRY),
        (502, Verdict.RETRY),
        (503, Verdict.RETRY),
        (504, Verdict.RETRY),
    ],
)
def test_classify_status(status: int, verdict: Verdict) -> None:
    assert classify_status(status) is verdict


def test_retry_after() -> None:
    assert retry_after_s(None) is None
    assert retry_after_s("3") == 3.0
    assert retry_after_s(" 0.5 ") == 0.5
    assert retry_after_s("-1") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_describe_error_keeps_urls_out() -> None:
    err = aiohttp.InvalidURL("http://user:token@example.invalid/hook?key=abc")
    assert describe_error(err) == "InvalidURL"
    assert describe_error(TimeoutError()) == "TimeoutError"
    assert describe_error(ConnectionRefusedError(111, "Connection refused")) == (
        "ConnectionRefusedError: ECONNREFUSED (Connection refused)"
    )


# --- delivery against a real server -------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server on 127.0.0.1 (ephemeral port); yields the hook URL."""
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def sender_for(
    url: str, registry: CollectorRegistry, *, max_attempts: int = 6, timeout_s: float = 2.0
) -> AsyncIterator[WebhookSender]:
    endpoint = WebhookSettings.model_validate(
        {
            "name": "ops",
            "url": url,
            "secret": SECRET,
            "timeout_s": timeout_s,
            "headers": {"Authorization": "Bearer tkn"},
        }
    )
    policy = RetryPolicy(max_attempts=max_attempts, initial_backoff_s=0.01, max_backoff_s=0.05)
    metrics = Metrics(registry, process=False)
    async with aiohttp.ClientSession() as session:
        yield WebhookSender(session, endpoint, policy, metrics, rng=random.Random(0))


async def test_retries_503_then_delivers_once() -> None:
    seen: list[tuple[int, dict[str, str], bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((len(seen), dict(request.headers), body))
        return web.Response(status=503 if len(seen) <= 3 else 200)

    registry = CollectorRegistry()
    event = make_event()
    async with serve(handler) as url, sender_for(url, registry) as sender:
        result = await sender.deliver(event)
    assert result.outcome is Outcome.DELIVERED
    assert result.attempts == 4
    assert result.last_status == 200
    assert len(seen) == 4
    for _, headers, body in seen:
        assert headers[IDEMPOTENCY_HEADER] == event.event_id
        assert headers["Authorization"] == "Bearer tkn"
        assert headers["Content-Type"] == "application/json"
        assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert json.loads(body)["event_id"] == event.event_id
    assert sample(registry, "ops", "retry") == 3
    assert sample(registry, "ops", "ok") == 1
    assert sample(registry, "ops", "parked") == 0
    count = registry.get_sample_value(
        "plantwatch_webhook_delivery_seconds_count", {"endpoint": "ops"}
    )
    assert count == 4


async def test_400_is_parked_without_retry() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=400, text="bad payload")

    registry = CollectorRegistry()
    async with serve(handler) as url, sender_for(url, registry) as sender:
        result = await sender.deliver(make_event())
    assert calls == 1
    assert result.outcome is Outcome.REJECTED
    assert result.attempts == 1
    assert result.last_status == 400
    assert sample(registry, "ops", "parked") == 1
    assert sample(registry, "ops", "retry") == 0


async def test_retry_budget_exhausted_is_failed() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=500)

    registry = CollectorRegistry()
    async with serve(handler) as url, sender_for(url, registry, max_attempts=3) as sender:
        result = await sender.deliver(make_event())
    assert result.outcome is Outcome.FAILED
    assert (result.attempts, result.last_status) == (3, 500)
    assert sample(registry, "ops", "retry") == 2
    assert sample(registry, "ops", "parked") == 1


async def test_slow_server_beyond_timeout_is_retried() -> None:
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.8)  # beyond the 0.2 s timeout
        return web.Response(status=204)

    registry = CollectorRegistry()
    started = time.monotonic()
    async with serve(handler) as url, sender_for(url, registry, timeout_s=0.2) as sender:
        result = await sender.deliver(make_event())
    assert result.outcome is Outcome.DELIVERED
    assert result.attempts == 2
    assert calls == 2
    assert sample(registry, "ops", "retry") == 1
    assert time.monotonic() - started < 5.0


async def test_connection_refused_is_retried_then_failed() -> None:
    import socket

    with socket.socket() as sock:  # reserve a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    registry = CollectorRegistry()
    url = f"http://127.0.0.1:{port}/hook"
    async with sender_for(url, registry, max_attempts=3) as sender:
        result = await sender.deliver(make_event())
    assert result.outcome is Outcome.FAILED
    assert result.attempts == 3
    assert result.last_status is None
    assert result.last_error is not None
    assert result.last_error.startswith("ClientConnectorError: ECONNREFUSED")
    assert str(port) not in result.last_error


async def test_secret_stays_out_of_logs_and_results(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503)

    caplog.set_level("DEBUG", logger="monitor.sinks.webhook")
    registry = CollectorRegistry()
    async with serve(handler) as url, sender_for(url, registry, max_attempts=3) as sender:
        result = await sender.deliver(make_event())
    assert "retrying" in caplog.text
    for secret in (SECRET, "Bearer tkn"):
        assert secret not in caplog.text
        assert secret not in repr(result)
        assert secret not in repr(sender.endpoint)
