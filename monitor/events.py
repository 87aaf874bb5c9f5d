"""Alert events: what the detector emits, the alerts topic stores and webhooks receive."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from monitor.errors import PlantwatchError

EVENT_SCHEMA_VERSION = 1


class EventType(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    RESOLVED = "resolved"


class Severity(StrEnum):
    """Severity from the ratio of score to threshold (bands set in the detector config)."""

    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


SEVERITY_ORDER = {Severity.WARNING: 0, Severity.MAJOR: 1, Severity.CRITICAL: 2}


@dataclass(frozen=True, slots=True)
class SensorShare:
    """A sensor's share of a window's reconstruction error (shares of all sensors sum to 1)."""

    sensor: str
    share: float


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One state change of one alert.

    ``alert_id`` is derived from the asset and the alert's first anomalous window, so scoring the
    same readings again (after a restart or rebalance) yields the same id; ``seq`` numbers the
    events of one alert, so ``event_id`` identifies an event for de-duplication downstream.
    """

    alert_id: str
    seq: int
    event: EventType
    asset: str
    start_ts_ms: int
    end_ts_ms: int | None
    ts_ms: int
    score: float
    peak_score: float
    threshold: float
    severity: Severity
    top_sensors: tuple[SensorShare, ...]
    model: ModelRef

    @property
    def event_id(self) -> str:
        """Idempotency key: the same event always has the same id."""
        return f"{self.alert_id}:{self.seq}:{self.event.value}"

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["schema_version"] = EVENT_SCHEMA_VERSION
        doc["event_id"] = self.event_id
        doc["event"] = self.event.value
        doc["severity"] = self.severity.value
        return doc

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> AlertEvent:
        try:
            doc = json.loads(data)
            if doc.pop("schema_version") != EVENT_SCHEMA_VERSION:
                raise ValueError("unsupported schema_version")
            doc.pop("event_id")
            return cls(
                alert_id=str(doc["alert_id"]),
                seq=int(doc["seq"]),
                event=EventType(doc["event"]),
                asset=str(doc["asset"]),
                start_ts_ms=int(doc["start_ts_ms"]),
                end_ts_ms=None if doc["end_ts_ms"] is None else int(doc["end_ts_ms"]),
                ts_ms=int(doc["ts_ms"]),
                score=float(doc["score"]),
                peak_score=float(doc["peak_score"]),
                threshold=float(doc["threshold"]),
                severity=Severity(doc["severity"]),
                top_sensors=tuple(
                    SensorShare(str(s["sensor"]), float(s["share"])) for s in doc["top_sensors"]
                ),
                model=ModelRef(**doc["model"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise EventDecodeError(f"not an alert event: {exc}") from None


class EventDecodeError(PlantwatchError):
    """Bytes on the alerts topic that are not an alert event of this schema."""


def alert_id(asset: str, start_ts_ms: int) -> str:
    """Deterministic alert id from the asset and the timestamp of its first anomalous window."""
    digest = hashlib.blake2b(f"{asset}\x1f{start_ts_ms}".encode(), digest_size=10)
    return digest.hexdigest()
