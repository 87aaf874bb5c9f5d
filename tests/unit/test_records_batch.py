"""Decoder.decode_many gives per message exactly what Decoder.decode gives, on any input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.records import (
    TS_MIN_MS,
    DecodedBatch,
    Decoder,
    DecoderConfig,
    ReadingBlock,
    Rejection,
    encode_binary,
)
from tests.unit.test_records_fuzz import DECODERS, FEATURES, json_scalars, mutated

BATCHES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

number = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.sampled_from([1e39, -1e39, 3.4028234663852886e38, 2**64, 2**63, -(2**63) - 1]),
)
asset = st.sampled_from(["pump-7", "pump-8", "tank-1", "", "pump-\x07", "x" * 200])
ts = st.one_of(
    st.integers(TS_MIN_MS, TS_MIN_MS + 50),
    st.sampled_from([TS_MIN_MS - 1, 2**64, True, 1.5e12, "2026-01-01T00:00:00Z", None]),
)


@st.composite
def reading(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {"asset": draw(asset), "ts": draw(ts)}
    shape = draw(st.sampled_from(["list", "dict", "dict", "short", "extra", "bad", "missing"]))
    row = [draw(number) for _ in FEATURES]
    if shape == "list":
        doc["values"] = row
    elif shape == "dict":
        doc["values"] = dict(zip(FEATURES, row, strict=True))
    elif shape == "short":
        doc["values"] = row[:-1]
    elif shape == "extra":
        doc["values"] = {**dict(zip(FEATURES, row, strict=True)), "other": 1.0}
    elif shape == "bad":
        doc["values"] = [*row[:-1], draw(json_scalars)]
    if draw(st.integers(0, 9)) == 0:
        del doc[draw(st.sampled_from(["asset", "ts"]))]
    return doc


@st.composite
def message(draw: st.DrawFn) -> tuple[bytes | None, bytes | None]:
    kind = draw(
        st.sampled_from(["single", "single", "single", "batch", "binary", "mutated", "raw"])
    )
    if kind == "single":
        doc: Any = draw(reading())
    elif kind == "batch":
        doc = draw(st.lists(reading(), max_size=7))
    elif kind == "binary":
        n = draw(st.integers(0, 3))
        t = TS_MIN_MS + np.arange(n, dtype=np.int64) * draw(st.sampled_from([1, 0, -1]))
        value = encode_binary("pump-7", FEATURES, t, np.ones((n, len(FEATURES)), np.float32))
        return draw(st.sampled_from([None, b"pump-7", b"pump-8"])), value
    elif kind == "mutated":
        return draw(st.sampled_from([None, b"pump-7"])), draw(mutated())
    else:
        return draw(st.none() | st.binary(max_size=8)), draw(
            st.sampled_from([None, b"", b"{", b"[]", b" {}", b"{}", b'{"asset": NaN}', b"[1]"])
        )
    key = draw(st.sampled_from([None, b"", b"pump-7", b"pump-8", b"pump-\xff"]))
    return key, json.dumps(doc).encode()  # NaN literals too


def assert_same_as_decode(
    decoder: Decoder, messages: list[tuple[bytes | None, bytes | None]]
) -> DecodedBatch:
    keys = [k for k, _ in messages]
    values = [v for _, v in messages]
    batch = decoder.decode_many(keys, values)
    rejections = dict(batch.rejections)
    assert [i for i, _ in batch.rejections] == sorted(rejections)
    assert batch.ts_ms.dtype == np.int64
    assert batch.values.dtype == np.float32
    assert (np.diff(batch.messages) >= 0).all()
    for i, (key, value) in enumerate(messages):
        expected = decoder.decode(key, value)
        if isinstance(expected, Rejection):
            assert rejections.get(i) == expected
            continue
        assert i not in rejections
        got = batch.blocks(i)
        assert [b.asset for b in got] == [b.asset for b in expected]
        for g, e in zip(got, expected, strict=True):
            assert g.ts_ms.tolist() == e.ts_ms.tolist()
            assert g.values.tobytes() == e.values.tobytes()  # float32-exact, -0.0 kept
    return batch


@BATCHES
@given(messages=st.lists(message(), max_size=30))
def test_decode_many_equals_decode(messages: list[tuple[bytes | None, bytes | None]]) -> None:
    for decoder in DECODERS:
        assert_same_as_decode(decoder, messages)


@BATCHES
@given(
    messages=st.lists(message(), max_size=6),
    n_valid=st.integers(0, 40),
    at=st.integers(0, 40),
)
def test_a_bad_message_among_many_valid_ones(
    messages: list[tuple[bytes | None, bytes | None]], n_valid: int, at: int
) -> None:
    """The fast path takes long valid runs; anything among them must still be judged alone."""
    valid = [
        (
            b"pump-7",
            json.dumps({"asset": "pump-7", "ts": TS_MIN_MS + i, "values": [1.5] * 4}).encode(),
        )
        for i in range(n_valid)
    ]
    at = min(at, len(valid))
    assert_same_as_decode(DECODERS[0], valid[:at] + messages + valid[at:])


def test_fast_path_output() -> None:
    decoder = Decoder(DecoderConfig(features=FEATURES))
    docs = [
        {"asset": f"p{i % 3}", "ts": TS_MIN_MS + i, "values": [i, 0.5, -0.0, 2**40]}
        for i in range(9)
    ]
    batch = [{"asset": "p1", "ts": TS_MIN_MS + 1, "values": [1, 2, 3, 4]},
             {"asset": "p2", "ts": TS_MIN_MS + 1, "values": [1, 2, 3, 4]},
             {"asset": "p1", "ts": TS_MIN_MS + 2, "values": [1, 2, 3, 4]}]  # fmt: skip
    values = [json.dumps(d).encode() for d in docs] + [json.dumps(batch).encode(), b"[]", b"{"]
    result = assert_same_as_decode(decoder, [(None, v) for v in values])
    assert len(result) == 12
    assert result.messages.tolist() == [*range(9), 9, 9, 9]
    # decode() groups a batch message per asset; so does decode_many.
    assert result.assets[9:] == ["p1", "p1", "p2"]
    assert [i for i, _ in result.rejections] == [11]
    assert result.blocks(10) == []
    assert isinstance(result.blocks(0)[0], ReadingBlock)


def test_the_collector_is_paused_while_json_is_parsed_and_left_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Parsing a run pauses Python's cyclic GC (it would traverse every parsed container again
    and again) and restores it afterwards, also when it was off to begin with."""
    import gc

    import monitor.records as records

    seen: list[bool] = []
    real = records.orjson

    class SpyOrjson:
        JSONDecodeError = real.JSONDecodeError

        @staticmethod
        def loads(value: bytes) -> Any:
            seen.append(gc.isenabled())
            return real.loads(value)

    monkeypatch.setattr(records, "orjson", SpyOrjson)
    monkeypatch.setattr(records.native, "speedups", None)  # the Python path parses
    decoder = Decoder(DecoderConfig(features=FEATURES))
    values = [
        json.dumps({"asset": "p1", "ts": TS_MIN_MS + i, "values": [1.0] * 4}).encode()
        for i in range(64)
    ]
    assert gc.isenabled()
    assert len(decoder.decode_many([None] * 64, values)) == 64
    assert seen
    assert not any(seen)
    assert gc.isenabled()
    gc.disable()
    try:
        assert len(decoder.decode_many([None] * 64, values)) == 64
        assert not gc.isenabled()
    finally:
        gc.enable()
