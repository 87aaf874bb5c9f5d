"""Property tests for the reading decoders: no input makes them raise; valid input round-trips."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.records import (
    BINARY_MAGIC,
    INTERNAL_ERROR_DETAIL,
    TS_MAX_MS,
    TS_MIN_MS,
    Decoder,
    DecoderConfig,
    ReadingBlock,
    Rejection,
    RejectReason,
    encode_binary,
    schema_fingerprint,
)

FEATURES = ("flow", "pressure", "temperature", "vibration_rms")
DECODERS = [
    Decoder(DecoderConfig(features=FEATURES)),
    Decoder(
        DecoderConfig(
            features=FEATURES,
            asset_patterns=("pump-*",),
            max_message_bytes=4096,
            max_batch_readings=5,
            max_asset_id_length=16,
            allow_extra_sensors=True,
        )
    ),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND_TRIP = settings(max_examples=150, deadline=None)


def check_never_raises(key: bytes | None, value: bytes | None) -> list[ReadingBlock] | Rejection:
    """Decode with every decoder configuration; return the default decoder's result."""
    results = [decoder.decode(key, value) for decoder in DECODERS]
    for result in results:
        if isinstance(result, Rejection):
            assert isinstance(result.reason, RejectReason)
            # The decoder's safety net must never be what caught the input.
            assert result.detail != INTERNAL_ERROR_DETAIL
            assert "\n" not in result.detail
            assert len(result.detail) <= 300
        else:
            for block in result:
                assert block.ts_ms.dtype == np.int64
                assert block.values.dtype == np.float32
                assert block.values.shape == (len(block.ts_ms), len(FEATURES))
                assert np.isfinite(block.values).all()
                assert (np.diff(block.ts_ms) > 0).all()
    return results[0]


# -- never raises ---------------------------------------------------------------------------------

keys = st.none() | st.binary(max_size=20) | st.sampled_from([b"pump-7", b"pump-\xff"])


@FUZZ
@given(key=keys, value=st.none() | st.binary(max_size=300))
def test_random_bytes(key: bytes | None, value: bytes | None) -> None:
    check_never_raises(key, value)


@FUZZ
@given(key=keys, tail=st.binary(max_size=200))
def test_random_bytes_after_each_magic(key: bytes | None, tail: bytes) -> None:
    check_never_raises(key, BINARY_MAGIC + tail)
    check_never_raises(key, b"{" + tail)
    check_never_raises(key, b"[" + tail)


@FUZZ
@given(
    version=st.integers(0, 255),
    fingerprint=st.sampled_from([schema_fingerprint(FEATURES), 0]) | st.integers(0, 2**32 - 1),
    n=st.sampled_from([0, 1, 2, 5, 2**32 - 1]) | st.integers(0, 2**32 - 1),
    f=st.sampled_from([len(FEATURES), 0]) | st.integers(0, 2**16 - 1),
    asset_len=st.integers(0, 2**16 - 1),
    body=st.binary(max_size=200),
)
def test_binary_header_fields(
    version: int, fingerprint: int, n: int, f: int, asset_len: int, body: bytes
) -> None:
    header = struct.pack("<3sBIIHH", BINARY_MAGIC, version, fingerprint, n, f, asset_len)
    check_never_raises(None, header + body)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=10)
    | st.sampled_from([TS_MIN_MS, TS_MAX_MS, "2026-01-01T00:00:00Z", "pump-7", *FEATURES])
)
json_docs = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.sampled_from(["asset", "ts", "values", *FEATURES]) | st.text(), inner)
    ),
    max_leaves=20,
)


@FUZZ
@given(key=keys, doc=json_docs)
def test_random_json_documents(key: bytes | None, doc: Any) -> None:
    check_never_raises(key, json.dumps(doc).encode())


@FUZZ
@given(
    asset=st.sampled_from(["pump-7", "", "tank-1", "x" * 200]) | st.text() | json_scalars,
    ts=json_scalars,
    values=st.dictionaries(st.sampled_from(FEATURES) | st.text(max_size=3), json_scalars)
    | st.lists(json_scalars | st.floats(width=32), max_size=6),
    as_batch=st.booleans(),
)
def test_reading_shaped_json(asset: Any, ts: Any, values: Any, as_batch: bool) -> None:
    doc: Any = {"asset": asset, "ts": ts, "values": values}
    check_never_raises(b"pump-7", json.dumps([doc, doc] if as_batch else doc).encode())


def valid_json_message(n: int) -> bytes:
    rows = [
        {"asset": "pump-7", "ts": TS_MIN_MS + i, "values": dict.fromkeys(FEATURES, 1.5)}
        for i in range(n)
    ]
    return json.dumps(rows if n > 1 else rows[0]).encode()


def valid_binary_message(n: int) -> bytes:
    ts = TS_MIN_MS + np.arange(n, dtype=np.int64)
    return encode_binary("pump-7", FEATURES, ts, np.ones((n, len(FEATURES)), np.float32))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid JSON or binary message with a few bytes flipped, cut, inserted or removed."""
    n = draw(st.integers(1, 4))
    message = bytearray(valid_binary_message(n) if draw(st.booleans()) else valid_json_message(n))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, max(0, len(message) - 1)))
        action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        if action == "flip" and message:
            message[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and message:
            message[position] = draw(st.integers(0, 255))
        elif action == "cut":
            del message[position:]
        elif action == "insert":
            message[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del message[position : position + draw(st.integers(1, 8))]
    return bytes(message)


@FUZZ
@given(key=st.none() | st.just(b"pump-7"), value=mutated())
def test_mutated_valid_messages(key: bytes | None, value: bytes) -> None:
    check_never_raises(key, value)


# -- round trips ----------------------------------------------------------------------------------

# Characters str.isprintable() accepts (the decoder refuses control and separator characters).
asset_ids = st.text(st.characters(categories=("L", "M", "N", "P", "S")), min_size=1, max_size=30)
feature_lists = st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=8, unique=True)
float32s = st.floats(width=32, allow_nan=False, allow_infinity=False)
timestamps = st.lists(st.integers(TS_MIN_MS, TS_MAX_MS), min_size=1, max_size=20, unique=True)


def exactly_equal(block: ReadingBlock, asset: str, ts: list[int], values: np.ndarray) -> None:
    assert block.asset == asset
    assert block.ts_ms.tolist() == ts
    # Byte equality: float32-exact, and -0.0 stays -0.0.
    assert block.values.tobytes() == np.asarray(values, dtype=np.float32).tobytes()


@ROUND_TRIP
@given(asset=asset_ids, features=feature_lists, ts=timestamps, data=st.data())
def test_binary_round_trip(asset: str, features: list[str], ts: list[int], data: Any) -> None:
    ts.sort()
    values = np.array(
        data.draw(
            st.lists(
                st.lists(float32s, min_size=len(features), max_size=len(features)),
                min_size=len(ts),
                max_size=len(ts),
            )
        ),
        dtype=np.float32,
    )
    decoder = Decoder(DecoderConfig(features=tuple(features), max_asset_id_length=128))
    message = encode_binary(asset, features, np.array(ts, dtype=np.int64), values)
    result = decoder.decode(asset.encode(), message)
    assert isinstance(result, list), result
    [block] = result
    exactly_equal(block, asset, ts, values)


def iso(ms: int, offset_minutes: int) -> str:
    zone = timezone(timedelta(minutes=offset_minutes))
    moment = datetime.fromtimestamp(ms / 1000, UTC).replace(microsecond=(ms % 1000) * 1000)
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


@ROUND_TRIP
@given(
    features=feature_lists,
    assets=st.lists(asset_ids, min_size=1, max_size=3, unique=True),
    data=st.data(),
)
def test_json_round_trip(features: list[str], assets: list[str], data: Any) -> None:
    """Single readings and multi-asset batches, object or list values, int or ISO timestamps."""
    expected: dict[str, tuple[list[int], list[list[float]]]] = {}
    readings: list[tuple[str, int, list[float]]] = []
    for asset in assets:
        ts = sorted(data.draw(timestamps.map(lambda t: t[:6])))
        rows = [
            data.draw(st.lists(float32s, min_size=len(features), max_size=len(features)))
            for _ in ts
        ]
        expected[asset] = (ts, rows)
        readings += [(asset, t, r) for t, r in zip(ts, rows, strict=True)]
    # Interleave assets while keeping each asset's own order.
    order = data.draw(st.permutations(range(len(readings))))
    position = {asset: 0 for asset in assets}
    by_asset = {a: [r for r in readings if r[0] == a] for a in assets}
    interleaved = []
    for i in order:
        asset = readings[i][0]
        interleaved.append(by_asset[asset][position[asset]])
        position[asset] += 1

    docs = []
    for asset, t, row in interleaved:
        ts_field: int | str = (
            iso(t, data.draw(st.integers(-14 * 60, 14 * 60))) if data.draw(st.booleans()) else t
        )
        values: Any = (
            dict(zip(features, map(float, row), strict=True))
            if data.draw(st.booleans())
            else [float(v) for v in row]
        )
        docs.append({"asset": asset, "ts": ts_field, "values": values})
    message: Any = docs[0] if len(docs) == 1 else docs
    decoder = Decoder(DecoderConfig(features=tuple(features)))
    result = decoder.decode(None, json.dumps(message).encode())
    assert isinstance(result, list), result
    first_seen = list(dict.fromkeys(asset for asset, _, _ in interleaved))
    assert [block.asset for block in result] == first_seen
    for block in result:
        ts, rows = expected[block.asset]
        exactly_equal(block, block.asset, ts, np.array(rows, dtype=np.float32))
