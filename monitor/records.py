"""The wire format of sensor readings on Kafka.

A JSON reading is ``{"asset": "pump-01", "ts": <epoch ms>, "values": {"flow": 1.2, ...}}``; a
JSON batch is a list of readings of one asset in one message. The monitor owns this format;
producers (the simulator, plant gateways) encode with the functions here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from monitor.errors import DataError


class Reading(NamedTuple):
    """One asset's sensor values at one instant."""

    asset: str
    ts_ms: int  # epoch milliseconds, UTC
    values: Mapping[str, float]


def _payload(asset: str, ts_ms: int, values: Mapping[str, float]) -> dict[str, object]:
    for name, value in values.items():
        if not math.isfinite(value):
            # JSON has no NaN/inf; a consumer could not parse the message.
            raise DataError(f"reading of {asset} at ts={ts_ms}: {name} is {value}, not finite")
    return {"asset": asset, "ts": ts_ms, "values": dict(values)}


def encode_json_reading(asset: str, ts_ms: int, values: Mapping[str, float]) -> bytes:
    """Encode one reading as compact UTF-8 JSON."""
    return json.dumps(_payload(asset, ts_ms, values), separators=(",", ":")).encode()


def encode_json_batch(readings: Iterable[Reading]) -> bytes:
    """Encode readings as one compact JSON list (one message)."""
    return json.dumps(
        [_payload(r.asset, r.ts_ms, r.values) for r in readings], separators=(",", ":")
    ).encode()
