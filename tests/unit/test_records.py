"""Wire formats of readings: JSON and binary decoding, validation and the reject policy."""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc
from typing import Any

import numpy as np
import pytest

from monitor.errors import ConfigError, DataError
from monitor.records import (
    BINARY_MAGIC,
    INTERNAL_ERROR_DETAIL,
    Decoder,
    DecoderConfig,
    Reading,
    ReadingBlock,
    Rejection,
    RejectReason,
    encode_binary,
    encode_json_batch,
    encode_json_reading,
    schema_fingerprint,
)

FEATURES = ("flow", "pressure", "temperature")
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
KEY = b"pump-7"


def make(**overrides: Any) -> Decoder:
    return Decoder(DecoderConfig(features=FEATURES, **overrides))


def reading(
    asset: Any = "pump-7", ts: Any = T0, values: Any = None, **extra: Any
) -> dict[str, Any]:
    if values is None:
        values = {"flow": 1.5, "pressure": 2.25, "temperature": 40.0}
    return {"asset": asset, "ts": ts, "values": values, **extra}


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def blocks(result: list[ReadingBlock] | Rejection) -> list[ReadingBlock]:
    assert isinstance(result, list), result
    return result


def rejected(result: list[ReadingBlock] | Rejection, reason: RejectReason | str) -> str:
    assert isinstance(result, Rejection), result
    assert result.reason is RejectReason(reason), result
    assert "\n" not in result.detail
    assert len(result.detail) <= 300
    assert result.detail != INTERNAL_ERROR_DETAIL
    return result.detail


def binary(n: int = 4, asset: str = "pump-7", features: tuple[str, ...] = FEATURES) -> bytes:
    ts = T0 + 1000 * np.arange(n, dtype=np.int64)
    values = (np.arange(n * len(features)).reshape(n, len(features)) / 3).astype(np.float32)
    return encode_binary(asset, features, ts, values)


# -- accepted messages ----------------------------------------------------------------------------


def test_json_single_with_object_values() -> None:
    values = {"temperature": 40.0, "flow": 1.5, "pressure": 2}  # any order, ints are numbers
    [block] = blocks(make().decode(KEY, dumps(reading(values=values))))
    assert block.asset == "pump-7"
    assert block.ts_ms.dtype == np.int64
    assert block.ts_ms.tolist() == [T0]
    assert block.values.dtype == np.float32
    assert block.values.tolist() == [[1.5, 2.0, 40.0]]
    assert not block.values.flags.writeable  # consumers copy into their own buffers


def test_json_single_with_list_values_in_feature_order() -> None:
    [block] = blocks(make().decode(None, dumps(reading(values=[1.5, 2.25, 40]))))
    assert block.values.tolist() == [[1.5, 2.25, 40.0]]


def test_large_integers_within_float32_range_are_numbers() -> None:
    [block] = blocks(make().decode(None, dumps(reading(values=[10**30, -(2**70), 0]))))
    assert block.values.tolist() == [[np.float32(1e30), np.float32(-(2.0**70)), 0.0]]


def test_existing_encoder_output_decodes() -> None:
    values = {"flow": 1.5, "pressure": 2.25, "temperature": 40.0}
    single = encode_json_reading("pump-7", T0, values)
    batch = encode_json_batch([Reading("pump-7", T0 + i, values) for i in range(3)])
    assert blocks(make().decode(KEY, single))[0].ts_ms.tolist() == [T0]
    assert blocks(make().decode(KEY, batch))[0].ts_ms.tolist() == [T0, T0 + 1, T0 + 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T00:00:00.250Z", T0 + 250),
        ("2026-01-01T00:00:00.250999+00:00", T0 + 250),  # sub-millisecond digits truncated
        ("2026-01-01T02:00:00+02:00", T0),
        ("2025-12-31 19:00:00-05:00", T0),
    ],
)
def test_iso_timestamps(text: str, expected: int) -> None:
    [block] = blocks(make().decode(KEY, dumps(reading(ts=text))))
    assert block.ts_ms.tolist() == [expected]


def test_json_batch_splits_by_asset_in_order_of_first_appearance() -> None:
    batch = [
        reading("pump-2", T0, [1, 2, 3]),
        reading("pump-1", T0 + 5, [4, 5, 6]),
        reading("pump-2", T0 + 10, [7, 8, 9]),
        reading("pump-1", T0 + 6, [10, 11, 12]),
    ]
    first, second = blocks(make().decode(None, dumps(batch)))
    assert first.asset == "pump-2"
    assert first.ts_ms.tolist() == [T0, T0 + 10]
    assert first.values.tolist() == [[1, 2, 3], [7, 8, 9]]
    assert second.asset == "pump-1"
    assert second.ts_ms.tolist() == [T0 + 5, T0 + 6]
    assert second.values.tolist() == [[4, 5, 6], [10, 11, 12]]


def test_empty_batch_and_leading_whitespace() -> None:
    assert make().decode(KEY, b" \n[]") == []
    assert len(blocks(make().decode(KEY, b"\t " + dumps(reading())))) == 1


def test_extra_top_level_fields_are_ignored() -> None:
    assert len(blocks(make().decode(KEY, dumps(reading(quality="good", seq=7))))) == 1


def test_extra_sensors_allowed_when_configured() -> None:
    values = {"flow": 1.0, "pressure": 2.0, "temperature": 3.0, "humidity": "n/a"}
    [block] = blocks(make(allow_extra_sensors=True).decode(KEY, dumps(reading(values=values))))
    assert block.values.tolist() == [[1.0, 2.0, 3.0]]


def test_empty_key_counts_as_no_key() -> None:
    assert len(blocks(make().decode(b"", dumps(reading())))) == 1


def test_asset_patterns_allow_matching_assets() -> None:
    decoder = make(asset_patterns=("pump-*", "compressor-?"))
    assert len(blocks(decoder.decode(None, dumps(reading("pump-7"))))) == 1
    assert len(blocks(decoder.decode(None, dumps(reading("compressor-2"))))) == 1


def test_binary_round_trip() -> None:
    ts = T0 + np.array([0, 1000, 1500, 9000], dtype=np.int64)
    values = np.array(
        [[1.5, -2.0, 3.25], [0.1, 1e30, -1e-30], [0.0, -0.0, 7.0], [1, 2, 3]], dtype=np.float32
    )
    message = encode_binary("pump-7", FEATURES, ts, values)
    assert message.startswith(BINARY_MAGIC)
    [block] = blocks(make().decode(KEY, message))
    assert block.asset == "pump-7"
    np.testing.assert_array_equal(block.ts_ms, ts)
    np.testing.assert_array_equal(block.values, values)
    assert block.values.shape == (4, 3)
    assert not block.values.flags.writeable


@pytest.mark.parametrize("asset", ["p", "pump-7", "pumpe-ü-7", "x" * 128])
def test_binary_layout_is_aligned_and_exact(asset: str) -> None:
    message = binary(n=3, asset=asset)
    magic, version, fingerprint, n, f, asset_len = struct.unpack_from("<3sBIIHH", message)
    assert (magic, version, n, f) == (b"PWR", 1, 3, 3)
    assert asset_len == len(asset.encode())
    assert fingerprint == schema_fingerprint(FEATURES)
    data_at = 16 + asset_len + (-(16 + asset_len) % 8)
    assert data_at % 8 == 0
    assert len(message) == data_at + 3 * 8 + 3 * 3 * 4
    assert np.frombuffer(message, "<i8", 3, data_at).tolist() == [T0, T0 + 1000, T0 + 2000]
    assert len(blocks(make().decode(asset.encode(), message))) == 1


def test_schema_fingerprint_is_order_sensitive_and_documented() -> None:
    digest = hashlib.sha256(b"flow\x1fpressure\x1ftemperature").digest()
    assert schema_fingerprint(FEATURES) == int.from_bytes(digest[:4], "little")
    assert schema_fingerprint(FEATURES) != schema_fingerprint(FEATURES[::-1])


def test_format_can_be_forced() -> None:
    assert len(blocks(make(format="binary").decode(KEY, binary()))) == 1
    rejected(make(format="binary").decode(KEY, dumps(reading())), RejectReason.UNDECODABLE)
    rejected(make(format="json").decode(KEY, binary()), RejectReason.UNDECODABLE)
    rejected(make(format="json").decode(KEY, b"42"), RejectReason.WRONG_TYPE)


def test_binary_without_readings_is_accepted_empty() -> None:
    assert make().decode(KEY, binary(n=0)) == []


# -- every reject reason --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,  # tombstone
        b"",
        b"hello",
        b'{"asset": "pump-7", "ts": ',  # truncated JSON
        b'{"asset": "pump-\xff"}',  # bad UTF-8
        '{"asset": "pump-7"}'.encode("utf-16"),
        b"[" * 100_000,  # nesting deeper than the recursion limit
        BINARY_MAGIC + b"\x01",  # truncated binary header
    ],
)
def test_undecodable(value: bytes | None) -> None:
    rejected(make().decode(KEY, value), RejectReason.UNDECODABLE)


def test_undecodable_key() -> None:
    detail = rejected(make().decode(b"\xff\xfe", dumps(reading())), RejectReason.UNDECODABLE)
    assert "key" in detail


def test_oversized_message_batch_and_asset() -> None:
    decoder = make(max_message_bytes=1000, max_batch_readings=3, max_asset_id_length=10)
    rejected(decoder.decode(None, b" " * 1001), RejectReason.OVERSIZED)
    batch = [reading(ts=T0 + i) for i in range(4)]
    assert "4 readings, limit 3" in rejected(decoder.decode(None, dumps(batch)), "oversized")
    rejected(decoder.decode(None, dumps(reading("pump-77777777"))), RejectReason.OVERSIZED)
    rejected(decoder.decode(None, binary(asset="pump-77777777")), RejectReason.OVERSIZED)
    rejected(decoder.decode(None, binary(n=4)), RejectReason.OVERSIZED)


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (reading(values={"flow": "1.5", "pressure": 2.0, "temperature": 3.0}), "'flow'"),
        (reading(values={"flow": True, "pressure": 2.0, "temperature": 3.0}), "boolean"),
        (reading(values={"flow": None, "pressure": 2.0, "temperature": 3.0}), "null"),
        (reading(values=[1.0, [2.0], 3.0]), "'pressure'"),
        (reading(values="1,2,3"), "'values'"),
        (reading(ts=float(T0)), "'ts'"),
        (reading(ts=None), "'ts' is missing"),
        (reading(asset=7), "'asset'"),
        ({"ts": T0, "values": [1, 2, 3]}, "'asset' is missing"),
        (["pump-7", T0, [1, 2, 3]], "not a reading object"),
        ([reading(), "pump-7"], "reading 1:"),
        (reading(asset=""), "empty"),
    ],
)
def test_wrong_type(doc: Any, fragment: str) -> None:
    assert fragment in rejected(make().decode(None, dumps(doc)), RejectReason.WRONG_TYPE)


def test_missing_sensor_names_it() -> None:
    doc = reading(values={"flow": 1.0, "temperature": 3.0})
    detail = rejected(make().decode(KEY, dumps(doc)), RejectReason.MISSING_SENSOR)
    assert detail == "sensor 'pressure' is missing (1 of 3 missing)"


def test_unknown_sensor_names_it() -> None:
    doc = reading(values={"flow": 1.0, "pressure": 2.0, "temperature": 3.0, "humidity": 4.0})
    detail = rejected(make().decode(KEY, dumps(doc)), RejectReason.UNKNOWN_SENSOR)
    assert "'humidity'" in detail


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf"), ("1e400", "inf")],
)
def test_non_finite_json(raw: str, shown: str) -> None:
    message = f'{{"asset":"pump-7","ts":{T0},"values":[1.0,{raw},3.0]}}'.encode()
    detail = rejected(make().decode(KEY, message), RejectReason.NON_FINITE)
    assert detail == f"sensor 'pressure' is {shown}, not a finite float32"


def test_non_finite_beyond_float32_and_huge_integers() -> None:
    rejected(make().decode(KEY, dumps(reading(values=[1e39, 0, 0]))), RejectReason.NON_FINITE)
    batch = [reading(ts=T0), reading(ts=T0 + 1, values=[0, 10**400, 0])]
    detail = rejected(make().decode(KEY, dumps(batch)), RejectReason.NON_FINITE)
    assert detail.startswith("reading 1: sensor 'pressure' is a 1329-bit integer")


def test_non_finite_binary() -> None:
    values = np.ones((3, 3), dtype=np.float32)
    values[2, 1] = np.nan
    message = encode_binary("pump-7", FEATURES, T0 + np.arange(3, dtype=np.int64), values)
    detail = rejected(make().decode(KEY, message), RejectReason.NON_FINITE)
    assert detail.startswith("reading 2: sensor 'pressure' is nan")


def test_batch_rejection_names_the_first_bad_reading() -> None:
    batch = [
        reading(ts=T0),
        reading(ts=T0 + 1),
        reading(ts=T0 + 2, values=[1.0, float("nan"), 3.0]),
        reading(ts=T0 + 3, values=[1.0, "x", 3.0]),  # a later, different problem
    ]
    detail = rejected(make().decode(KEY, json.dumps(batch).encode()), RejectReason.NON_FINITE)
    assert detail.startswith("reading 2: sensor 'pressure'")


@pytest.mark.parametrize(
    "asset", ["tank-1", "Pump-7", "pump-7\nFAKE LOG LINE", "pump-\x00", "pump-\ud800"]
)
def test_unknown_asset(asset: str) -> None:
    decoder = make(asset_patterns=("pump-*",))
    detail = rejected(decoder.decode(None, dumps(reading(asset))), RejectReason.UNKNOWN_ASSET)
    assert "\x00" not in detail


def test_unknown_asset_binary_and_in_batches() -> None:
    decoder = make(asset_patterns=("pump-*",))
    rejected(decoder.decode(None, binary(asset="tank-1")), RejectReason.UNKNOWN_ASSET)
    batch = [reading("pump-1"), reading("tank-1")]
    detail = rejected(decoder.decode(None, dumps(batch)), RejectReason.UNKNOWN_ASSET)
    assert detail.startswith("reading 1: asset 'tank-1'")
    # The verdict is cached per asset id; a cached verdict still names the reading.
    batch = [reading("pump-1"), reading("pump-1", T0 + 1), reading("tank-1", T0 + 2)]
    assert rejected(decoder.decode(None, dumps(batch)), "unknown_asset").startswith("reading 2:")


def test_other_asset_marks_messages_all_for_another_services_asset() -> None:
    """A message is marked as another service's (skipped, not dead-lettered) only when all of
    it is for one asset that ``other_asset_patterns`` match; an asset no pattern matches, and
    anything else that names another's asset, is dead-lettered."""
    decoder = make(asset_patterns=("pump-*",), other_asset_patterns=("tank-*",))
    whole = [
        (None, dumps(reading("tank-1"))),
        (b"tank-1", dumps([reading("tank-1"), reading("tank-1", T0 + 1)])),
        (None, binary(asset="tank-1")),
        (b"tank-1", binary(asset="tank-1")),
        # Keyed by another service's asset: not parsed at all (that service checks it).
        (b"tank-1", b"\x00not json"),
        (b"tank-1", dumps(reading("pump-1"))),
    ]
    for key, value in whole * 2:  # the second time from the verdict cache
        result = decoder.decode(key, value)
        assert "another service's" in rejected(result, RejectReason.UNKNOWN_ASSET)
        assert isinstance(result, Rejection)
        assert result.other_asset
    not_other = [
        (None, dumps(reading("boiler-9"))),  # nobody's: a producer's mistake
        (b"boiler-9", binary(asset="boiler-9")),
        # Unkeyed, mixing assets: the pump's reading would be lost with it.
        (None, dumps([reading("pump-1"), reading("tank-1", T0 + 1)])),
        (None, dumps([reading("tank-1"), reading("tank-2", T0 + 1)])),
        (None, dumps(reading("tank-\x00"))),  # unprintable: malformed, not another's
        (b"pump-1", dumps(reading("tank-1"))),  # key mismatch
        (None, dumps(reading("pump-1", values={"temperature": 1.0}))),  # malformed pump reading
    ]
    for key, value in not_other * 2:
        result = decoder.decode(key, value)
        assert isinstance(result, Rejection), result
        assert not result.other_asset, result
    # Without other_asset_patterns, no asset is another's.
    result = make(asset_patterns=("pump-*",)).decode(None, dumps(reading("tank-1")))
    assert isinstance(result, Rejection)
    assert not result.other_asset
    # Through decode_many (the service's path) as well, per message exactly as decode().
    batch = decoder.decode_many([None, None], [dumps(reading("tank-1")), dumps(reading("pump-1"))])
    assert len(batch) == 1
    [(i, rejection)] = batch.rejections
    assert i == 0
    assert rejection.other_asset
    pairs = [*whole, *not_other, (b"pump-2", dumps(reading("pump-2"))), (None, binary())]
    keys, values = [k for k, _ in pairs] * 3, [v for _, v in pairs] * 3
    batch = decoder.decode_many(keys, values)
    assert batch.rejections == [
        (i, r) for i, r in enumerate(map(decoder.decode, keys, values)) if isinstance(r, Rejection)
    ]
    assert sorted(set(batch.messages.tolist())) == [
        i
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
        if not isinstance(decoder.decode(k, v), Rejection)
    ]


def test_claimed_assets_are_another_routes_even_where_asset_patterns_match() -> None:
    """A route's decoder (Settings.routes) leaves the assets of earlier routes to them, although
    its own patterns match them too: the first route whose patterns match an asset takes it."""
    decoder = make(asset_patterns=("c*",), claimed_patterns=("compressor-*",))
    for key, value in [
        (None, dumps(reading("compressor-1"))),
        (b"compressor-1", b"\x00not json"),  # keyed: set aside unparsed
        (None, binary(asset="compressor-1")),
    ]:
        result = decoder.decode(key, value)
        assert isinstance(result, Rejection), result
        assert result.other_asset, result
    assert not isinstance(decoder.decode(None, dumps(reading("crusher-1"))), Rejection)
    # An empty asset_patterns (the default route) takes every asset no route claims.
    default = make(claimed_patterns=("compressor-*", "c*"))
    assert not isinstance(default.decode(None, dumps(reading("pump-1"))), Rejection)
    claimed = default.decode_many([b"crusher-1", None], [b"{}", dumps(reading("pump-1"))])
    assert [(i, r.other_asset) for i, r in claimed.rejections] == [(0, True)]
    assert claimed.assets == ["pump-1"]


def test_a_shared_topic_keeps_the_fast_path() -> None:
    """Messages keyed by other services' assets, interleaved with this service's, are left out
    before parsing: the rest still decodes as one run (the fast paths accept only runs that are
    all valid; without the cut every run would be split down to single messages)."""
    decoder = make(asset_patterns=("pump-*",), other_asset_patterns=("tank-*",))
    keys, values = [], []
    for i in range(64):
        asset = "tank-1" if i % 2 else "pump-1"
        keys.append(asset.encode())
        values.append(dumps(reading(asset, T0 + i)))
    calls = []
    real = decoder.decode
    decoder.decode = lambda k, v: calls.append(k) or real(k, v)  # type: ignore[method-assign]
    batch = decoder.decode_many(keys, values)
    assert len(batch) == 32
    assert [i for i, r in batch.rejections if r.other_asset] == list(range(1, 64, 2))
    assert calls == []  # nothing went message by message


@pytest.mark.parametrize(
    "ts",
    [
        1_767_225_600,  # seconds, not milliseconds
        1_767_225_600_000_000,  # microseconds
        -1,
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-01-01T00:00:00",  # naive: no UTC offset
        "1960-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z" + " " * 100,
    ],
)
def test_bad_timestamp(ts: Any) -> None:
    rejected(make().decode(KEY, dumps(reading(ts=ts))), RejectReason.BAD_TIMESTAMP)


def test_bad_timestamp_binary() -> None:
    message = encode_binary(
        "pump-7", FEATURES, np.array([1_767_225_600], np.int64), np.ones((1, 3), np.float32)
    )
    rejected(make().decode(KEY, message), RejectReason.BAD_TIMESTAMP)


def test_key_mismatch() -> None:
    detail = rejected(make().decode(b"pump-8", dumps(reading())), RejectReason.KEY_MISMATCH)
    assert "'pump-7'" in detail
    assert "'pump-8'" in detail
    rejected(make().decode(b"pump-8", binary()), RejectReason.KEY_MISMATCH)
    batch = [reading("pump-8"), reading("pump-7")]
    detail = rejected(make().decode(b"pump-8", dumps(batch)), RejectReason.KEY_MISMATCH)
    assert detail.startswith("reading 1:")


def test_schema_mismatch() -> None:
    reordered = binary(features=("pressure", "flow", "temperature"))
    rejected(make().decode(KEY, reordered), RejectReason.SCHEMA_MISMATCH)
    fewer = binary(features=FEATURES[:2])
    assert "2 features" in rejected(make().decode(KEY, fewer), RejectReason.SCHEMA_MISMATCH)
    short_list = reading(values=[1.0, 2.0])
    rejected(make().decode(KEY, dumps(short_list)), RejectReason.SCHEMA_MISMATCH)


def test_out_of_order_within_a_message() -> None:
    batch = [reading(ts=T0), reading(ts=T0 + 2), reading(ts=T0 + 1)]
    detail = rejected(make().decode(KEY, dumps(batch)), RejectReason.OUT_OF_ORDER)
    assert detail.startswith("reading 2: ts")
    duplicate = [reading(ts=T0), reading(ts=T0)]
    assert "equals" in rejected(make().decode(KEY, dumps(duplicate)), "out_of_order")
    ts = T0 + np.array([0, 5, 5], dtype=np.int64)
    message = encode_binary("pump-7", FEATURES, ts, np.ones((3, 3), np.float32))
    assert rejected(make().decode(KEY, message), "out_of_order").startswith("reading 2:")


def test_out_of_order_is_per_asset() -> None:
    batch = [reading("pump-1", T0 + 5), reading("pump-2", T0), reading("pump-1", T0 + 6)]
    assert len(blocks(make().decode(None, dumps(batch)))) == 2


def test_duplicate_timestamp_member_exists() -> None:
    assert RejectReason("duplicate_timestamp") is RejectReason.DUPLICATE_TIMESTAMP
    assert {r.value for r in RejectReason} >= {"undecodable", "oversized", "out_of_order"}


# -- binary framing -------------------------------------------------------------------------------


def test_truncated_binary_at_every_length() -> None:
    message = binary(n=3)
    decoder = make()
    for cut in range(len(message)):
        rejected(decoder.decode(KEY, message[:cut]), RejectReason.UNDECODABLE)
    rejected(decoder.decode(KEY, message + b"\x00"), RejectReason.UNDECODABLE)


def test_huge_declared_counts_are_rejected_cheaply() -> None:
    fingerprint = schema_fingerprint(FEATURES)
    header = struct.pack("<3sBIIHH", b"PWR", 1, fingerprint, 2**32 - 1, 3, 6) + b"pump-7"
    detail = rejected(make().decode(KEY, header), RejectReason.OVERSIZED)
    assert "4294967295 readings" in detail
    # Within the batch limit but far beyond the message's real size.
    header = struct.pack("<3sBIIHH", b"PWR", 1, fingerprint, 9_999, 3, 6) + b"pump-7\0\0"
    assert "truncated" in rejected(make().decode(KEY, header), RejectReason.UNDECODABLE)
    header = struct.pack("<3sBIIHH", b"PWR", 1, fingerprint, 1, 3, 65_535)
    rejected(make().decode(KEY, header), RejectReason.OVERSIZED)


def test_declared_sizes_never_drive_allocation() -> None:
    # Even with limits that would allow it, the real message size is checked first.
    decoder = make(max_batch_readings=2**32, max_asset_id_length=2**16)
    header = struct.pack("<3sBIIHH", b"PWR", 1, schema_fingerprint(FEATURES), 2**32 - 1, 3, 1)
    tracemalloc.start()
    try:
        result = decoder.decode(None, header + b"p\0\0\0\0\0\0\0")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    rejected(result, RejectReason.UNDECODABLE)
    assert peak < 100_000


def test_binary_framing_errors() -> None:
    message = bytearray(binary(n=2))
    bad_version = bytes(message[:3]) + b"\x02" + bytes(message[4:])
    assert "version 2" in rejected(make().decode(KEY, bad_version), RejectReason.UNDECODABLE)
    padded = bytearray(message)
    padded[22] = 1  # the padding after the 6-byte asset id "pump-7"
    assert "padding" in rejected(make().decode(KEY, bytes(padded)), RejectReason.UNDECODABLE)
    bad_utf8 = bytearray(message)
    bad_utf8[16] = 0xFF
    assert "UTF-8" in rejected(make(format="binary").decode(None, bytes(bad_utf8)), "undecodable")


# -- encoders and configuration -------------------------------------------------------------------


def test_encode_binary_refuses_what_the_format_cannot_carry() -> None:
    ts = np.array([T0], np.int64)
    with pytest.raises(DataError, match="shape"):
        encode_binary("pump-7", FEATURES, ts, np.ones((1, 2), np.float32))
    with pytest.raises(DataError):
        encode_binary("", FEATURES, ts, np.ones((1, 3), np.float32))
    with pytest.raises(DataError, match="UTF-8"):
        encode_binary("pump-\ud800", FEATURES, ts, np.ones((1, 3), np.float32))


@pytest.mark.parametrize(
    "config",
    [
        DecoderConfig(features=()),
        DecoderConfig(features=("a", "a")),
        DecoderConfig(features=("a",), max_batch_readings=0),
    ],
)
def test_invalid_decoder_config(config: DecoderConfig) -> None:
    with pytest.raises(ConfigError):
        Decoder(config)


def test_single_feature_model() -> None:
    decoder = Decoder(DecoderConfig(features=("flow",)))
    [block] = blocks(decoder.decode(None, dumps(reading(values={"flow": 2.5}))))
    assert block.values.tolist() == [[2.5]]
    message = encode_binary("p", ["flow"], np.array([T0], np.int64), np.array([[2.5]], np.float32))
    assert blocks(decoder.decode(None, message))[0].values.tolist() == [[2.5]]


def test_internal_errors_become_rejections(monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = make()

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(decoder, "_decode_json", broken)
    result = decoder.decode(KEY, dumps(reading()))
    assert result == Rejection(RejectReason.UNDECODABLE, INTERNAL_ERROR_DETAIL)
