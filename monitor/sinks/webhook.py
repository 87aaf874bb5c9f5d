"""Webhook delivery of alert events: payloads, HMAC signatures, retries with backoff.

Everything here except :class:`WebhookSender` is pure and synchronous. The sender posts one event
to one endpoint over a shared :class:`aiohttp.ClientSession`, retrying transient failures with
exponential backoff and full jitter, and reports whether the event was delivered or must be
parked on the delivery dead-letter topic (the caller does the parking and the offset commits).

Signature scheme (when the endpoint has a ``secret``)::

    X-Plantwatch-Timestamp: <unix seconds>
    X-Plantwatch-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + body)>

Receivers check it with :func:`verify_signature` and de-duplicate by the ``Idempotency-Key``
header (the event's ``event_id``, also in the body): delivery is at-least-once.

Mutual TLS (an endpoint's ``tls`` settings): :func:`client_ssl_context` builds one
:class:`ssl.SSLContext` per endpoint when the sender is created, with the endpoint's CA and
client certificate; a missing, unreadable or mismatched file is a one-line
:class:`~monitor.errors.ConfigError` then, never at the first alert.

Alertmanager (``format: alertmanager``) keeps an alert firing only until its ``endsAt``; without
one it resolves the alert ``resolve_timeout`` (5 min) after the last post. So a firing alert is
posted with ``endsAt = now + ALERTMANAGER_LEASE_S`` and the notifier re-posts every firing alert
each ``ALERTMANAGER_RESEND_S`` (as Prometheus does with its own alerts), and an explicit
``endsAt`` ends it when plantwatch resolves it. ``severity`` is a label, so Alertmanager routes
on it; since an alert's severity only rises, every post also resolves the same alert's lower
severities, and an escalation reads as "warning resolved, major firing" rather than two alerts.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
import logging
import os
import random
import ssl
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from monitor.config import DeliverySettings, WebhookSettings, WebhookTlsSettings
from monitor.errors import ConfigError
from monitor.events import SEVERITY_ORDER, AlertEvent, EventType, SensorShare
from monitor.metrics import Metrics

log = logging.getLogger(__name__)

TIMESTAMP_HEADER: Final = "X-Plantwatch-Timestamp"
SIGNATURE_HEADER: Final = "X-Plantwatch-Signature"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
SIGNATURE_PREFIX: Final = "sha256="
ALERTNAME: Final = "PlantwatchAnomaly"
USER_AGENT: Final = "plantwatch-notify"
#: Firing alerts re-posted to Alertmanager this often, each time valid for the lease.
ALERTMANAGER_RESEND_S: Final = 60.0
#: How long Alertmanager keeps a firing alert without hearing of it again. Long enough to ride
#: out a notifier restart (which forgets which alerts are open until their next event); short
#: enough that alerts of a plantwatch that is gone for good end (its "down" rule fires anyway).
ALERTMANAGER_LEASE_S: Final = 3600.0


# --- payloads ---------------------------------------------------------------------------------


def iso_utc(ts_ms: int) -> str:
    """RFC 3339 UTC timestamp with milliseconds, as Alertmanager expects (``...T..:..:..Z``)."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_top_sensors(top: tuple[SensorShare, ...]) -> str:
    """``"vibration_rms 62%, bearing_temp 21%"``: sensor shares of the error, in given order."""
    return ", ".join(f"{s.sensor} {s.share * 100:.0f}%" for s in top)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def json_payload(event: AlertEvent) -> bytes:
    """The ``format: json`` body: the event document itself (it carries ``event_id``)."""
    return _dumps(event.to_dict())


def alertmanager_alert(event: AlertEvent, *, generator_url: str | None = None) -> dict[str, Any]:
    """One alert in Alertmanager's ``/api/v2/alerts`` schema.

    Labels identify the alert and stay low-cardinality (one series per alert, not per event);
    everything that changes from event to event goes in annotations.
    """
    top = format_top_sensors(event.top_sensors)
    ratio = event.score / event.threshold if event.threshold else float("inf")
    description = (
        f"Anomaly score {event.score:.4g} ({ratio:.3g}× threshold {event.threshold:.4g}, "
        f"peak {event.peak_score:.4g}) on {event.asset} since {iso_utc(event.start_ts_ms)}"
    )
    if event.event is EventType.RESOLVED and event.end_ts_ms is not None:
        description += f", resolved at {iso_utc(event.end_ts_ms)}"
    if top:
        description += f"; top sensors: {top}"
    alert: dict[str, Any] = {
        "labels": {
            "alertname": ALERTNAME,
            "asset": event.asset,
            "severity": event.severity.value,
            "alert_id": event.alert_id,
            "model": event.model.name,
        },
        "annotations": {
            "summary": f"{event.severity.value} anomaly on {event.asset}",
            "description": description,
            "top_sensors": top,
            "score": f"{event.score:.6g}",
            "threshold": f"{event.threshold:.6g}",
            "event_id": event.event_id,
        },
        "startsAt": iso_utc(event.start_ts_ms),
    }
    if event.event is EventType.RESOLVED:
        # A resolved event without an end falls back to its own timestamp: the alert is over.
        alert["endsAt"] = iso_utc(event.end_ts_ms if event.end_ts_ms is not None else event.ts_ms)
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


def alertmanager_payload(event: AlertEvent, *, generator_url: str | None = None) -> bytes:
    """The ``format: alertmanager`` body: a JSON list holding one alert."""
    return _dumps([alertmanager_alert(event, generator_url=generator_url)])


def alertmanager_state(
    event: AlertEvent, *, now_ms: int, lease_s: float = ALERTMANAGER_LEASE_S
) -> list[dict[str, Any]]:
    """What Alertmanager should hold for ``event``'s alert: the alert itself (firing until
    ``now + lease``, or resolved) and its lower severities resolved (see the module docstring).
    """
    current = alertmanager_alert(event)
    if event.event is not EventType.RESOLVED:
        current["endsAt"] = iso_utc(now_ms + int(lease_s * 1000))
    alerts = [current]
    # endsAt never before startsAt, or Alertmanager rejects the whole post.
    ended = iso_utc(max(event.ts_ms, event.start_ts_ms))
    rank = SEVERITY_ORDER[event.severity]
    for lower, lower_rank in SEVERITY_ORDER.items():
        if lower_rank < rank:
            sibling = alertmanager_alert(replace(event, severity=lower))
            sibling["endsAt"] = ended
            alerts.append(sibling)
    return alerts


def delivery_payload(event: AlertEvent, fmt: str, *, now_ms: int | None = None) -> bytes:
    """Body the sender posts: :func:`build_payload`, with Alertmanager's lease and siblings."""
    if fmt == "alertmanager":
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return _dumps(alertmanager_state(event, now_ms=now))
    return build_payload(event, fmt)


def build_payload(event: AlertEvent, fmt: str) -> bytes:
    """Body for an endpoint's configured ``format``."""
    if fmt == "alertmanager":
        return alertmanager_payload(event)
    if fmt == "json":
        return json_payload(event)
    raise ValueError(f"unknown webhook format {fmt!r}")


# --- signatures -------------------------------------------------------------------------------


def _secret_bytes(secret: str | bytes) -> bytes:
    return secret if isinstance(secret, bytes) else secret.encode()


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` over ``f"{timestamp}.".encode() + body``."""
    message = f"{timestamp}.".encode() + body
    digest = hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def signature_headers(
    secret: str | bytes, body: bytes, *, now: float | None = None
) -> dict[str, str]:
    """The timestamp and signature headers for one request."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


def verify_signature(
    secret: str | bytes,
    timestamp: str | int,
    body: bytes,
    header: str,
    *,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs ``body`` at ``timestamp`` with ``secret``, within the tolerance.

    The tolerance bounds replays of a captured request; the comparison is constant-time.
    """
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    if not isinstance(header, str) or not header.startswith(SIGNATURE_PREFIX):
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode(), header.encode())


# --- TLS ------------------------------------------------------------------------------------


def client_ssl_context(endpoint: WebhookSettings) -> ssl.SSLContext | None:
    """The endpoint's TLS context, or ``None`` (aiohttp's default) without ``tls`` settings.

    Raises :class:`ConfigError` in one line naming the setting and file when a file is missing
    or unreadable, holds no usable certificate or key, the key cannot be decrypted or does not
    belong to the certificate. The key password never appears in a message.
    """
    tls = endpoint.tls
    if tls is None:
        return None
    where = f"delivery.webhooks {endpoint.name}: tls"
    for field in ("ca_file", "client_cert", "client_key"):
        path = getattr(tls, field)
        if path is not None:
            try:
                path.read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{where}.{field} {path}: cannot read ({exc.strerror or exc})"
                ) from None
    try:
        context = ssl.create_default_context(
            cafile=str(tls.ca_file) if tls.ca_file is not None else None
        )
    except (ssl.SSLError, OSError):
        raise ConfigError(
            f"{where}.ca_file {tls.ca_file}: no usable CA certificate in it (PEM expected)"
        ) from None
    if tls.client_cert is not None:
        password = tls.client_key_password.get_secret_value() if tls.client_key_password else ""
        try:
            # A callable, even for an unencrypted key: with no password at all OpenSSL would
            # prompt for one on the terminal.
            context.load_cert_chain(tls.client_cert, tls.client_key, password=lambda: password)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(_client_cert_problem(where, tls, exc)) from None
    return context


def _client_cert_problem(where: str, tls: WebhookTlsSettings, exc: BaseException) -> str:
    """Which file is at fault when OpenSSL only says "PEM lib"."""
    assert tls.client_cert is not None
    cert = tls.client_cert
    key_field, key = ("client_key", tls.client_key) if tls.client_key else ("client_cert", cert)
    if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"{where}.{key_field} {key}: the key does not belong to client_cert {cert}"
    try:
        x509.load_pem_x509_certificates(cert.read_bytes())
    except ValueError:
        return f"{where}.client_cert {cert}: no PEM certificate in it"
    data = key.read_bytes()
    password = (
        tls.client_key_password.get_secret_value().encode() if tls.client_key_password else None
    )
    try:
        load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            return (
                f"{where}.{key_field} {key}: the key is encrypted and no client_key_password is set"
            )
    except ValueError:
        if b"ENCRYPTED" in data:
            return f"{where}.{key_field} {key}: cannot decrypt the key (wrong client_key_password?)"
        return f"{where}.{key_field} {key}: no PEM private key in it"
    return (
        f"{where}: cannot use client_cert {cert} with {key_field} {key} "
        f"({getattr(exc, 'reason', None) or type(exc).__name__})"
    )


# --- retry policy -----------------------------------------------------------------------------


class Verdict(StrEnum):
    """What one attempt's outcome means for the event."""

    OK = "ok"
    RETRY = "retry"
    REJECT = "reject"


def classify_status(status: int) -> Verdict:
    """2xx delivered; 408, 429 and 5xx transient; anything else (4xx, 3xx) permanent.

    Redirects are not followed (a POST turned GET would drop the alert), so they count as a
    misconfigured URL rather than something time will fix.
    """
    if 200 <= status < 300:
        return Verdict.OK
    if status in (408, 429) or status >= 500:
        return Verdict.RETRY
    return Verdict.REJECT


#: Transport failures worth retrying: the receiver may be restarting, slow or unreachable.
RETRIABLE_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError)


def is_retriable_error(exc: BaseException) -> bool:
    """Whether an exception from one attempt is transient (timeouts, connection errors)."""
    return isinstance(exc, RETRIABLE_ERRORS)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempt budget and exponential backoff with full jitter."""

    max_attempts: int = 8
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: DeliverySettings) -> RetryPolicy:
        return cls(settings.max_attempts, settings.initial_backoff_s, settings.max_backoff_s)

    def cap(self, retry: int) -> float:
        """Upper bound of the delay before retry number ``retry`` (0 for the first retry)."""
        # Clamp the exponent: 2.0**1100 overflows, and the cap is reached long before anyway.
        return min(self.max_backoff_s, self.initial_backoff_s * 2.0 ** min(retry, 64))

    def delay(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in ``[0, cap(retry)]`` so recovering receivers are not stampeded."""
        return rng.uniform(0.0, self.cap(retry))


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After: <seconds>`` header (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


# --- delivery ---------------------------------------------------------------------------------


class Outcome(StrEnum):
    DELIVERED = "delivered"
    #: Retry budget spent on transient failures.
    FAILED = "delivery_failed"
    #: A permanent rejection (4xx other than 408/429): retrying would not help.
    REJECTED = "delivery_rejected"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How delivering one event to one endpoint ended."""

    endpoint: str
    outcome: Outcome
    attempts: int
    last_status: int | None = None
    #: Exception class (and OS error text), never a URL or header: both may hold secrets.
    last_error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome is Outcome.DELIVERED


RESET: Final = f"ECONNRESET ({os.strerror(errno.ECONNRESET)})"


def describe_error(exc: BaseException) -> str:
    """A log-safe description of a transport error: class name and OS error code.

    aiohttp's messages can embed the request URL, which may carry a token, so no message text
    is kept; the errno (``ECONNREFUSED``) or the TLS reason (``CERTIFICATE_VERIFY_FAILED``)
    says what went wrong.
    """
    name = type(exc).__name__
    os_error = getattr(exc, "os_error", None)
    if not isinstance(os_error, OSError):
        os_error = exc if isinstance(exc, OSError) else None
    reason = getattr(os_error, "reason", None)
    if isinstance(os_error, ssl.SSLError) and isinstance(reason, str):
        return f"{name}: TLS {reason}"
    if os_error is not None and os_error.errno:
        code = errno.errorcode.get(os_error.errno, str(os_error.errno))
        return f"{name}: {code} ({os.strerror(os_error.errno)})"
    return name


class WebhookSender:
    """Delivers events to one endpoint, with retries; shares the caller's HTTP session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: WebhookSettings,
        policy: RetryPolicy,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self._session = session
        self._policy = policy
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s)
        self._secret = endpoint.secret.get_secret_value().encode() if endpoint.secret else None
        #: Built once here (at start), not per request: loading keys is slow and may fail.
        self._ssl: ssl.SSLContext | bool = client_ssl_context(endpoint) or True

    def _describe(self, exc: BaseException) -> str:
        text = describe_error(exc)
        if self.endpoint.url.startswith("https://") and text.endswith(RESET):
            # TLS 1.3 servers check the client certificate after the client's side of the
            # handshake is done: a refused certificate reaches the client as a reset.
            text += "; over TLS, a server that refuses the client certificate resets"
        return text

    def _headers(self, event: AlertEvent, body: bytes) -> dict[str, str]:
        # Configured headers first, so they cannot override the signature or idempotency key.
        headers = {k: v.get_secret_value() for k, v in self.endpoint.headers.items()}
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        headers[IDEMPOTENCY_HEADER] = event.event_id
        if self._secret is not None:
            # Signed per attempt: a retry minutes later must not look like a stale replay.
            headers.update(signature_headers(self._secret, body))
        return headers

    async def resend(self, events: list[AlertEvent]) -> bool:
        """Re-post the Alertmanager state of ``events`` in one request, once (no retries: the
        next round is the retry). Counted as ``resent`` or ``resend_failed``."""
        now_ms = int(time.time() * 1000)
        alerts = [a for e in events for a in alertmanager_state(e, now_ms=now_ms)]
        body = _dumps(alerts)
        headers = {k: v.get_secret_value() for k, v in self.endpoint.headers.items()}
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        if self._secret is not None:
            headers.update(signature_headers(self._secret, body))
        try:
            status, _ = await self._post(body, headers)
        except RETRIABLE_ERRORS as exc:
            log.debug("webhook %s: re-send failed: %s", self.name, describe_error(exc))
            ok = False
        else:
            ok = classify_status(status) is Verdict.OK
        self._metrics.webhook_deliveries.labels(
            self.name, "resent" if ok else "resend_failed"
        ).inc()
        return ok

    async def _attempt(self, event: AlertEvent, body: bytes) -> tuple[int, str | None]:
        """POST once; the status and any ``Retry-After`` header."""
        return await self._post(body, self._headers(event, body))

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None]:
        started = time.perf_counter()
        try:
            async with self._session.post(
                self.endpoint.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                ssl=self._ssl,
            ) as response:
                # Drain the body so the connection goes back to the pool.
                await response.read()
                return response.status, response.headers.get("Retry-After")
        finally:
            self._metrics.webhook_latency.labels(self.name).observe(time.perf_counter() - started)

    async def deliver(self, event: AlertEvent) -> DeliveryResult:
        """Deliver ``event``, retrying transient failures within the policy's budget."""
        body = delivery_payload(event, self.endpoint.format)
        deliveries = self._metrics.webhook_deliveries
        last_status: int | None = None
        last_error: str | None = None
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                status, retry_after_header = await self._attempt(event, body)
            except RETRIABLE_ERRORS as exc:
                verdict = Verdict.RETRY
                last_status, last_error = None, self._describe(exc)
            else:
                verdict = classify_status(status)
                last_status, last_error = status, None
                retry_after = retry_after_s(retry_after_header)
            if verdict is Verdict.OK:
                deliveries.labels(self.name, "ok").inc()
                return DeliveryResult(self.name, Outcome.DELIVERED, attempt, last_status)
            if verdict is Verdict.REJECT:
                deliveries.labels(self.name, "parked").inc()
                return DeliveryResult(self.name, Outcome.REJECTED, attempt, last_status, last_error)
            if attempt >= self._policy.max_attempts:
                deliveries.labels(self.name, "parked").inc()
                return DeliveryResult(self.name, Outcome.FAILED, attempt, last_status, last_error)
            deliveries.labels(self.name, "retry").inc()
            delay = self._policy.delay(attempt - 1, self._rng)
            if retry_after is not None:
                # Honour the receiver's hint, but never beyond our own ceiling.
                delay = max(delay, min(retry_after, self._policy.max_backoff_s))
            log.debug(
                "webhook %s: event %s attempt %d failed (%s), retrying in %.2fs",
                self.name,
                event.event_id,
                attempt,
                last_status if last_status is not None else last_error,
                delay,
            )
            await asyncio.sleep(delay)
