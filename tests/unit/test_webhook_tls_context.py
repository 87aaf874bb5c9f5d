"""Webhook mutual TLS: the per-endpoint SSL context, and a sender against a real HTTPS receiver
on 127.0.0.1 that requires client certificates from its own CA."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.config import WebhookSettings
from monitor.errors import ConfigError
from monitor.events import AlertEvent, EventType, ModelRef, Severity
from monitor.metrics import Metrics
from monitor.sinks.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Outcome,
    RetryPolicy,
    WebhookSender,
    client_ssl_context,
    verify_signature,
)
from tests.certs import WebhookPki, server_context, webhook_pki

SECRET = "hmac-secret-tls-5"
KEY_PASSWORD = "key-pass-never-logged-93"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> WebhookPki:
    return webhook_pki(tmp_path_factory.mktemp("pki"), KEY_PASSWORD)


def endpoint(url: str, **tls: object) -> WebhookSettings:
    return WebhookSettings.model_validate(
        {"name": "ops", "url": url, "secret": SECRET, "timeout_s": 2.0, "tls": tls or None}
    )


def event() -> AlertEvent:
    return AlertEvent(
        alert_id="a1",
        seq=0,
        event=EventType.OPENED,
        asset="pump-1",
        start_ts_ms=1_767_225_600_000,
        end_ts_ms=None,
        ts_ms=1_767_225_600_000,
        score=3.0,
        peak_score=3.0,
        threshold=1.0,
        severity=Severity.MAJOR,
        top_sensors=(),
        model=ModelRef("m", "1", "00" * 32),
    )


@asynccontextmanager
async def https_receiver(pki: WebhookPki, seen: list[str]) -> AsyncIterator[str]:
    """An HTTPS receiver that requires a client certificate signed by the hooks CA."""
    context = server_context(pki)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_signature(
            SECRET,
            request.headers.get(TIMESTAMP_HEADER, ""),
            body,
            request.headers.get(SIGNATURE_HEADER, ""),
        )
        if not ok:
            return web.Response(status=401)
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        seen.append(subject.get("commonName", "?"))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    try:
        yield f"https://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


# --- the context: built once, bad files are one line naming them --------------------------------


def test_no_tls_settings_keep_the_default() -> None:
    assert client_ssl_context(endpoint("https://127.0.0.1/hook")) is None


def test_context_with_client_certificate(pki: WebhookPki) -> None:
    context = client_ssl_context(
        endpoint(
            "https://127.0.0.1/hook",
            ca_file=pki.ca,
            client_cert=pki.client.cert,
            client_key=pki.client.key,
        )
    )
    assert context is not None
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    combined = pki.client.cert.with_name("combined.pem")
    combined.write_bytes(pki.client.cert.read_bytes() + pki.client.key.read_bytes())
    assert client_ssl_context(endpoint("https://x/h", client_cert=combined)) is not None
    encrypted = endpoint(
        "https://x/h",
        client_cert=pki.client_encrypted.cert,
        client_key=pki.client_encrypted.key,
        client_key_password=KEY_PASSWORD,
    )
    assert client_ssl_context(encrypted) is not None


def _problem(pki: WebhookPki, case: str, tmp_path: Path) -> tuple[WebhookSettings, str]:
    enc_cert = pki.client_encrypted.cert
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    url = "https://127.0.0.1/hook"
    cases = {
        "missing cert": (
            endpoint(url, client_cert=tmp_path / "nope.pem", client_key=pki.client.key),
            rf"tls\.client_cert {tmp_path}/nope\.pem: cannot read \(No such file",
        ),
        "missing key": (
            endpoint(url, client_cert=pki.client.cert, client_key=tmp_path / "nope.key"),
            rf"tls\.client_key {tmp_path}/nope\.key: cannot read",
        ),
        "missing ca": (
            endpoint(url, ca_file=tmp_path / "ca.pem"),
            rf"tls\.ca_file {tmp_path}/ca\.pem: cannot read",
        ),
        "garbage ca": (
            endpoint(url, ca_file=garbage),
            r"tls\.ca_file .*garbage\.pem: no usable CA certificate",
        ),
        "garbage cert": (
            endpoint(url, client_cert=garbage, client_key=pki.client.key),
            r"tls\.client_cert .*garbage\.pem: no PEM certificate in it",
        ),
        "garbage key": (
            endpoint(url, client_cert=pki.client.cert, client_key=garbage),
            r"tls\.client_key .*garbage\.pem: no PEM private key in it",
        ),
        "mismatch": (
            endpoint(url, client_cert=pki.client.cert, client_key=pki.other.key),
            r"tls\.client_key .*other\.key: the key does not belong to client_cert .*/plantwatch",
        ),
        "no password": (
            endpoint(url, client_cert=enc_cert, client_key=pki.client_encrypted.key),
            r"client-enc\.enc\.key: the key is encrypted and no client_key_password is set",
        ),
        "wrong password": (
            endpoint(
                url,
                client_cert=enc_cert,
                client_key=pki.client_encrypted.key,
                client_key_password="wrong-" + KEY_PASSWORD,
            ),
            r"client-enc\.enc\.key: cannot decrypt the key \(wrong client_key_password\?\)",
        ),
    }
    return cases[case]


@pytest.mark.parametrize(
    "case",
    [
        "missing cert",
        "missing key",
        "missing ca",
        "garbage ca",
        "garbage cert",
        "garbage key",
        "mismatch",
        "no password",
        "wrong password",
    ],
)
def test_bad_tls_files_fail_in_one_line(pki: WebhookPki, tmp_path: Path, case: str) -> None:
    settings, message = _problem(pki, case, tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        client_ssl_context(settings)
    text = str(info.value)
    assert text.startswith("delivery.webhooks ops: tls")
    assert "\n" not in text
    assert KEY_PASSWORD not in text


async def test_sender_fails_at_construction_not_at_the_first_alert(
    pki: WebhookPki, tmp_path: Path
) -> None:
    settings, _ = _problem(pki, "missing cert", tmp_path)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(ConfigError, match="cannot read"):
            WebhookSender(
                session, settings, RetryPolicy(), Metrics(CollectorRegistry(), process=False)
            )


# --- against a real HTTPS receiver that requires client certificates ------------------------------


async def deliver(settings: WebhookSettings, attempts: int = 3) -> tuple[object, CollectorRegistry]:
    registry = CollectorRegistry()
    policy = RetryPolicy(max_attempts=attempts, initial_backoff_s=0.01, max_backoff_s=0.02)
    async with aiohttp.ClientSession() as session:
        sender = WebhookSender(
            session, settings, policy, Metrics(registry, process=False), rng=random.Random(1)
        )
        return await sender.deliver(event()), registry


async def test_delivers_with_the_client_certificate_and_a_valid_signature(pki: WebhookPki) -> None:
    seen: list[str] = []
    async with https_receiver(pki, seen) as url:
        result, registry = await deliver(
            endpoint(url, ca_file=pki.ca, client_cert=pki.client.cert, client_key=pki.client.key)
        )
    assert result.outcome is Outcome.DELIVERED, result  # type: ignore[attr-defined]
    # The receiver verified the HMAC signature (else 401) and saw our certificate.
    assert seen == ["plantwatch"]
    ok = {"endpoint": "ops", "result": "ok"}
    assert registry.get_sample_value("plantwatch_webhook_deliveries_total", ok) == 1


async def test_encrypted_client_key_delivers(pki: WebhookPki) -> None:
    seen: list[str] = []
    async with https_receiver(pki, seen) as url:
        result, _ = await deliver(
            endpoint(
                url,
                ca_file=pki.ca,
                client_cert=pki.client_encrypted.cert,
                client_key=pki.client_encrypted.key,
                client_key_password=KEY_PASSWORD,
            )
        )
    assert result.outcome is Outcome.DELIVERED, result  # type: ignore[attr-defined]
    assert seen == ["client-enc"]


@pytest.mark.parametrize("client", ["none", "stranger"])
async def test_without_a_trusted_client_certificate_the_receiver_refuses(
    pki: WebhookPki, client: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="monitor")
    seen: list[str] = []
    tls: dict[str, object] = {"ca_file": pki.ca}
    if client == "stranger":
        tls |= {"client_cert": pki.stranger.cert, "client_key": pki.stranger.key}
    async with https_receiver(pki, seen) as url:
        result, registry = await deliver(endpoint(url, **tls), attempts=3)
    assert seen == []
    assert result.outcome is Outcome.FAILED, result  # type: ignore[attr-defined]
    assert result.attempts == 3  # type: ignore[attr-defined]
    assert result.last_status is None  # type: ignore[attr-defined]
    error = result.last_error  # type: ignore[attr-defined]
    print(f"\n{client} client certificate: {error}")
    # The TLS 1.3 server checks the certificate after the client's side of the handshake is
    # done, so the client sees the refusal as a reset (with a hint), or a TLS alert if it
    # reads first; never an HTTP status.
    assert error in (
        "ClientOSError: ECONNRESET (Connection reset by peer); over TLS, a server that "
        "refuses the client certificate resets",
        "ServerDisconnectedError",
    ) or error.startswith("ClientOSError: TLS "), error
    retry = {"endpoint": "ops", "result": "retry"}
    assert registry.get_sample_value("plantwatch_webhook_deliveries_total", retry) == 2
    assert SECRET not in caplog.text
    assert "retrying" in caplog.text


async def test_untrusted_server_certificate_names_the_tls_reason(pki: WebhookPki) -> None:
    seen: list[str] = []
    async with https_receiver(pki, seen) as url:
        # No ca_file: the system CAs do not know the receiver's private CA.
        result, _ = await deliver(
            endpoint(url, client_cert=pki.client.cert, client_key=pki.client.key), attempts=1
        )
    assert seen == []
    assert result.outcome is Outcome.FAILED  # type: ignore[attr-defined]
    assert result.last_error == (  # type: ignore[attr-defined]
        "ClientConnectorCertificateError: TLS CERTIFICATE_VERIFY_FAILED"
    )
