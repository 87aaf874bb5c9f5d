"""The C extension ``monitor._speedups`` against the pure-Python paths it replaces: built,
and giving bit for bit what they give (numbers, whole JSON runs, gathered windows)."""

from __future__ import annotations

import itertools
import json
import random
import struct
from decimal import Decimal, getcontext
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import native
from monitor.records import (
    TS_MIN_MS,
    DecodedBatch,
    Decoder,
    DecoderConfig,
    Rejection,
    encode_binary,
)
from monitor.windows import WindowStore, _gather

FEATURES = ("flow", "pressure", "temperature", "vibration_rms")
F32_MAX = float(np.finfo(np.float32).max)
CONFIGS = [
    DecoderConfig(features=FEATURES),
    DecoderConfig(features=FEATURES, allow_extra_sensors=True, max_batch_readings=3),
]


def test_the_extension_is_built() -> None:
    # make install builds it (setup.py); without a compiler it is optional, but where the
    # tests run it must be there, or every fast path below would go untested.
    try:
        import monitor._speedups  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"monitor._speedups did not build ({exc}); run `make install` with gcc")
    assert native.speedups is not None, native.describe()


def _speedups() -> native.Speedups:
    assert native.speedups is not None
    return native.speedups


# -- numbers -----------------------------------------------------------------------------


def _reference_f32(token: str) -> bytes | None:
    """What the Python path makes of a sensor value token: json.loads, float64, float32."""
    try:
        value = json.loads(token)
    except ValueError:
        return None
    if type(value) not in (int, float):
        return None
    try:
        wide = np.array([value], dtype=np.float64)
    except OverflowError:
        return None
    if not abs(wide[0]) <= F32_MAX:
        return None
    return wide.astype(np.float32).tobytes()


def _native_f32(token: str) -> bytes | None:
    message = b'{"asset":"a","ts":1,"values":[' + token.encode() + b"]}"
    parsed = _speedups().parse_json_run([message], ("x",), False, 10)
    return None if parsed is None else bytes(parsed[2])


EDGE_TOKENS = [
    *("-0", "-0.0", "0", "0.0", "0e0", "-0e-0", "1E+2", "1e308", "1e39", "3.4028235e38"),
    *("3.4028234663852886e38", "3.4028234663852887e38", "1.5e-45", "1e-46", "7e-46"),
    "3.40282356779733661637539395458142568448e38",
    "340282346638528859811704183484516925440",
    "340282356779733661637539395458142568448",
    *("9007199254740993", "9007199254740992", "-9007199254740993", "18446744073709551615"),
    *("18446744073709551616", "99999999999999999999", "1.4e-45", "0.1", "2.5", "-1.75e-3"),
    *("01", "1.", ".5", "-", "+1", "1e", "1e+", "NaN", "Infinity", "-Infinity", "0x10", "1_0"),
    *("1.0e-99999999999", "1e99999999999999", "0." + "0" * 400 + "1", "1" * 38, "1" * 39),
    *("1" * 40, "2.2250738585072011e-308", "4.9e-324", "123456789012345678901234567890e-20"),
    *("true", "null", '"1"', "[1]", "1 ", " 1", "1e0001", "0.000000000000000000000000001"),
]


@pytest.mark.parametrize("token", EDGE_TOKENS)
def test_edge_numbers_convert_as_python_does(token: str) -> None:
    assert _native_f32(token) == _reference_f32(token.strip())


def _random_token(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:  # any double, as repr prints it
        return repr(struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0])
    if kind == 1:
        return repr(rng.uniform(-1, 1) * 10 ** rng.randrange(-60, 40))
    if kind == 2:  # float32 values printed as doubles, what most producers send
        return repr(float(np.float32(rng.uniform(-100, 100))))
    if kind == 3:  # mantissas of 1..24 digits with an exponent
        digits = rng.randrange(1, 25)
        m = str(rng.randrange(10 ** (digits - 1), 10**digits))
        sign = "-" if rng.random() < 0.5 else ""
        body = m[0] + "." + m[1:] if digits > 1 else m
        return f"{sign}{body}e{rng.randrange(-90, 50)}"
    if kind == 4:  # integers of up to 41 digits
        return str(rng.randrange(-(10 ** rng.randrange(1, 42)), 10 ** rng.randrange(1, 42)))
    if kind == 5:  # halfway between two doubles, the hardest to round
        getcontext().prec = 60
        m = rng.getrandbits(53) | (1 << 52)
        return format((Decimal(2 * m + 1) / 2) * (Decimal(2) ** rng.randrange(-200, 80)), "e")
    if kind == 6:  # 15..20 significant digits with the point anywhere
        digits = rng.randrange(15, 21)
        m = str(rng.randrange(10 ** (digits - 1), 10**digits))
        cut = rng.randrange(0, digits + 1)
        return m[:cut] + "." + m[cut:] if 0 < cut < digits else m
    return "0." + "0" * rng.randrange(0, 30) + str(rng.getrandbits(60))


def test_random_numbers_convert_as_python_does() -> None:
    rng = random.Random(20261206)
    mismatches = []
    for _ in range(30_000):
        token = _random_token(rng)
        if _native_f32(token) != _reference_f32(token):
            mismatches.append(token)
    assert mismatches == []


# -- whole runs through Decoder.decode_many ---------------------------------------------------


def _same(a: DecodedBatch, b: DecodedBatch) -> bool:
    return (
        a.assets == b.assets
        and np.array_equal(a.ts_ms, b.ts_ms)
        and a.values.dtype == b.values.dtype == np.float32
        and np.array_equal(a.values.view(np.uint32), b.values.view(np.uint32))  # -0.0 too
        and np.array_equal(a.messages, b.messages)
        and a.rejections == b.rejections
    )


def _decode_all_ways(
    keys: list[bytes | None], values: list[bytes | None], configs: list[DecoderConfig] = CONFIGS
) -> None:
    for config in configs:
        decoder = Decoder(config)
        fast = decoder.decode_many(keys, values)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(native, "speedups", None)
            python = decoder.decode_many(keys, values)
        assert _same(fast, python), (config, values)
        # And per message what decode() gives.
        rejected = dict(fast.rejections)
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            expected = decoder.decode(key, value)
            if isinstance(expected, Rejection):
                assert rejected.get(i) == expected
                continue
            assert i not in rejected
            rows = np.flatnonzero(fast.messages == i)
            assert [fast.assets[j] for j in rows] == [
                block.asset for block in expected for _ in range(len(block.ts_ms))
            ]


def _reading(draw: Any, asset: str, ts: int, *, as_list: bool, values: list[str]) -> dict[str, str]:
    """A reading as its fields' JSON texts, so numbers keep the exact token drawn."""
    if as_list:
        body = "[" + ",".join(values) + "]"
    else:
        names = list(FEATURES)
        draw(st.randoms()).shuffle(names)
        body = "{" + ",".join(f'"{n}":{values[FEATURES.index(n)]}' for n in names) + "}"
    return {"asset": json.dumps(asset, ensure_ascii=False), "ts": str(ts), "values": body}


NUMBER = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(-(10**25), 10**25).map(str),
    st.sampled_from(["-0", "-0.0", "1e39", "1E+2", "1e-46", "3.4028235e38", "NaN", "01"]),
)
ASSET = st.one_of(
    st.sampled_from(["pump-1", "pump-2", "mixer-9", "pompe-é", "泵-3", "pump\\u002d1"]),
    st.text(min_size=0, max_size=6),
)
EXTRA = st.sampled_from(
    [
        '"site":"north"',
        '"q":192',
        '"nested":{"a":[1,2,{"b":null}],"c":"\\u00e9\\n"}',
        '"ok":true',
        '"lone":"\\ud800"',
        '"nan":NaN',
        '"asset":"dup"',
        '"ts":"2026-01-01T00:00:00Z"',
        '"\\u0061sset":"x"',
    ]
)


@st.composite
def messages(draw: Any) -> tuple[list[bytes | None], list[bytes]]:
    keys: list[bytes | None] = []
    values: list[bytes] = []
    for i in range(draw(st.integers(5, 12))):
        as_batch = draw(st.booleans()) and draw(st.booleans())
        readings = []
        for j in range(draw(st.integers(0, 4)) if as_batch else 1):
            asset = draw(ASSET)
            ts = TS_MIN_MS + 1000 * (i * 10 + j) + draw(st.sampled_from([0, 0, 0, -5000]))
            fields = _reading(
                draw,
                asset,
                ts,
                as_list=draw(st.booleans()),
                values=[draw(NUMBER) for _ in FEATURES],
            )
            items = [f'"{k}":{v}' for k, v in fields.items()]
            if draw(st.integers(0, 3)) == 0:
                items.insert(draw(st.integers(0, len(items))), draw(EXTRA))
            if draw(st.integers(0, 5)) == 0:
                items.pop(draw(st.integers(0, len(items) - 1)))
            ws = draw(st.sampled_from(["", " ", "\n\t"]))
            readings.append("{" + ws + ("," + ws).join(items) + "}")
        text = ("[" + ",".join(readings) + "]") if as_batch else readings[0]
        data = text.encode()
        if draw(st.integers(0, 15)) == 0:  # break the bytes: bad UTF-8, NUL, truncation
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(
                st.sampled_from([b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\x00", b""])
            )
        values.append(data)
        asset_key = draw(st.sampled_from([None, b"", b"pump-1", b"\xff"]))
        keys.append(asset_key)
    return keys, values


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_runs_decode_as_the_python_path_and_decode_do(
    run: tuple[list[bytes | None], list[bytes]],
) -> None:
    keys, values = run
    _decode_all_ways(keys, values)


def _spy_on(monkeypatch: pytest.MonkeyPatch, parser: str) -> list[bool]:
    """Put a spy in front of the extension: per call of ``parser``, whether it accepted."""
    calls: list[bool] = []
    real = _speedups()

    class Spy:
        def __getattr__(self, name: str) -> Any:
            if name != parser:
                return getattr(real, name)

            def spied(*args: Any) -> Any:
                parsed = getattr(real, parser)(*args)
                calls.append(parsed is not None)
                return parsed

            return spied

    monkeypatch.setattr(native, "speedups", Spy())
    return calls


def test_the_native_path_takes_ordinary_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a test of equality (above) but that the C parser, not a fallback, did the work.
    values = [
        json.dumps({"asset": f"pump-{i % 3}", "ts": TS_MIN_MS + i, "values": [1.5] * 4}).encode()
        for i in range(64)
    ]
    calls = _spy_on(monkeypatch, "parse_json_run")
    batch = Decoder(CONFIGS[0]).decode_many([None] * 64, values)
    assert len(batch) == 64
    assert calls == [True]


# -- whole runs of binary messages ------------------------------------------------------------

BINARY_CONFIGS = [
    DecoderConfig(features=FEATURES),  # auto: binary runs beside JSON ones
    DecoderConfig(features=FEATURES, format="binary"),
    DecoderConfig(
        features=FEATURES,
        format="binary",
        max_batch_readings=3,
        max_asset_id_length=6,
        max_message_bytes=200,
        asset_patterns=("pump-*", "泵-*"),
        other_asset_patterns=("mixer-*",),
    ),
]
BINARY_ASSETS = ["pump-1", "pump-2", "泵-3", "mixer-9", "pump-100000"]
CORRUPTIONS = (
    "magic version fingerprint n f truncate trailing padding utf8 ts_order ts_range nan inf"
)


def _corrupt(data: bytes, n: int, how: str, at: float) -> bytes:
    """One of the ways a binary message of ``n`` readings goes wrong (header fields, framing,
    contents); ``at`` in [0, 1) picks the byte, reading or value where that is a choice."""
    b = bytearray(data)
    alen = int.from_bytes(b[14:16], "little")
    data_at = 16 + alen + (-(16 + alen) % 8)
    if how == "magic":
        b[0:3] = b"PWX"
    elif how == "version":
        b[3] = 2
    elif how == "fingerprint":
        b[4] ^= 1
    elif how == "n":
        b[8:12] = (n + 1).to_bytes(4, "little")
    elif how == "f":
        b[12:14] = (len(FEATURES) + 1).to_bytes(2, "little")
    elif how == "truncate":
        del b[int(at * len(b)) :]
    elif how == "trailing":
        b += b"\0"
    elif how == "padding" and data_at > 16 + alen:
        b[data_at - 1] = 1
    elif how == "utf8":
        b[16] = 0xFF
    elif how == "ts_order" and n > 1:  # a reading at its predecessor's time, or before
        j = 1 + int(at * (n - 1))
        earlier = b[data_at + 8 * (j - 1) : data_at + 8 * j]
        b[data_at + 8 * j : data_at + 8 * j + 8] = earlier
    elif how == "ts_range" and n:
        j = int(at * n)
        b[data_at + 8 * j : data_at + 8 * j + 8] = bytes(8)
    elif how in ("nan", "inf") and n:
        k = data_at + 8 * n + 4 * int(at * n * len(FEATURES))
        b[k : k + 4] = np.float32("nan" if how == "nan" else "-inf").tobytes()
    return bytes(b)


def _binary(i: int, asset: str, n: int, values: list[float] | None = None) -> bytes:
    ts = TS_MIN_MS + 1000 * (10 * i + np.arange(n, dtype=np.int64))
    rows = np.asarray(values if values is not None else [i] * (4 * n), dtype=np.float32)
    return encode_binary(asset, FEATURES, ts, rows.reshape(n, 4))


@st.composite
def binary_messages(draw: Any) -> tuple[list[bytes | None], list[bytes | None]]:
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    for i in range(draw(st.integers(5, 20))):
        asset = draw(st.sampled_from(BINARY_ASSETS))
        n = draw(st.sampled_from([0, 1, 2, 3, 3, 4]))
        floats = st.floats(width=32, allow_nan=False)
        data: bytes | None = _binary(
            i, asset, n, draw(st.lists(floats, min_size=4 * n, max_size=4 * n))
        )
        roll = draw(st.integers(0, 19))
        if roll == 0:
            how = draw(st.sampled_from(CORRUPTIONS.split()))
            data = _corrupt(data, n, how, draw(st.floats(0, 1, exclude_max=True)))
        elif roll == 1:
            data = json.dumps({"asset": asset, "ts": TS_MIN_MS, "values": [1, 2, 3, 4]}).encode()
        elif roll == 2:
            data = None  # a tombstone
        values.append(data)
        # Mostly keys that pass, so that runs long enough for the native parser occur.
        keys.append(draw(st.sampled_from([None, None, None, b"", asset.encode(), b"\xff"])))
    return keys, values


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(binary_messages())
def test_binary_runs_decode_as_the_python_path_and_decode_do(
    run: tuple[list[bytes | None], list[bytes | None]],
) -> None:
    keys, values = run
    _decode_all_ways(keys, values, BINARY_CONFIGS)


@pytest.mark.parametrize("how", CORRUPTIONS.split())
@pytest.mark.parametrize("at", [0.0, 0.5, 0.99])
def test_one_bad_message_in_a_binary_run_is_rejected_as_decode_does(how: str, at: float) -> None:
    values: list[bytes | None] = [_binary(i, f"pump-{i % 3}", 3) for i in range(12)]
    good = values[7]
    assert good is not None
    values[7] = _corrupt(good, 3, how, at)
    assert values[7] != good
    _decode_all_ways([None] * 12, values, BINARY_CONFIGS[:2])


@pytest.mark.parametrize("fmt", ["auto", "binary"])
def test_the_native_path_takes_ordinary_binary_runs(
    monkeypatch: pytest.MonkeyPatch, fmt: Literal["auto", "binary"]
) -> None:
    ts = TS_MIN_MS + np.arange(5, dtype=np.int64)
    values = [
        encode_binary(f"pump-{i % 3}", FEATURES, ts + 10 * i, np.full((5, 4), i, np.float32))
        for i in range(64)
    ]
    calls = _spy_on(monkeypatch, "parse_binary_run")
    batch = Decoder(DecoderConfig(features=FEATURES, format=fmt)).decode_many([None] * 64, values)
    assert len(batch) == 320
    assert batch.messages.tolist() == np.repeat(np.arange(64), 5).tolist()
    assert calls == [True]


# -- runs of message kinds -----------------------------------------------------------------

MESSAGE = st.one_of(
    st.none(),
    st.sampled_from([b"", b"{", b"[1]", b"PWR", b"PW", b"PWR\x01rest", b" {}", b"x" * 40]),
    st.binary(max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(MESSAGE, max_size=12), limit=st.sampled_from([1, 2, 8, 100]))
def test_message_runs_as_the_python_path_finds_them(values: list[bytes | None], limit: int) -> None:
    for fmt in ("auto", "json"):
        decoder = Decoder(DecoderConfig(features=FEATURES, format=fmt, max_message_bytes=limit))
        native_runs = decoder._runs(values)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(native, "speedups", None)
            assert native_runs == decoder._runs(values)
        # Runs tile the batch, and neighbours differ in kind.
        assert [r[1] for r in native_runs[1:]] == [r[2] for r in native_runs[:-1]]
        assert sum(end - start for _, start, end in native_runs) == len(values)
        assert all(a[0] != b[0] for a, b in itertools.pairwise(native_runs))


# -- gathering windows ---------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "length", "n_features", "n"), [(40, 8, 3, 25), (5, 5, 1, 3)])
def test_windows_gather_as_numpy_does(
    monkeypatch: pytest.MonkeyPatch, rows: int, length: int, n_features: int, n: int
) -> None:
    rng = np.random.default_rng(0)
    seq = rng.standard_normal((rows, n_features)).astype(np.float32)
    starts = rng.integers(0, rows - length + 1, size=n).astype(np.intp)
    fast = np.empty((n, length, n_features), np.float32)
    _gather(seq, starts, fast)
    with monkeypatch.context() as m:
        m.setattr(native, "speedups", None)
        slow = np.empty_like(fast)
        _gather(seq, starts, slow)
    assert np.array_equal(fast, slow)
    assert np.array_equal(fast[1], seq[starts[1] : starts[1] + length])


def test_a_window_out_of_range_is_refused_before_anything_is_written() -> None:
    seq = np.zeros((10, 2), np.float32)
    out = np.full((2, 4, 2), 7.0, np.float32)
    with pytest.raises(ValueError, match="outside"):
        _speedups().gather_windows(seq, np.array([0, 7], np.intp), 4, out)
    assert (out == 7.0).all()


# -- appending readings: arguments checked before anything is touched ---------------------------


def _append_args(store: WindowStore, n: int) -> list[Any]:
    """Arguments of append_readings as WindowStore._append_many_native passes them."""
    return [
        ["a"] * n,
        store._assets,
        np.arange(1, n + 1, dtype=np.int64) * 1000,
        np.zeros((n, store.n_features), dtype=np.float32),
        np.arange(n, dtype=np.int64),
        store._slabs,
        (store._count, store._head, store._last_ts, store._phase, store._part, store._seen),
        tuple(a[store._pn :] for a in store._pending_arrays()),
        np.empty(n, dtype=np.intp),
        np.empty(n, dtype=np.intp),
        np.empty(n, dtype=bool),
        store.stride,
        store._max_step,
        0,
        0,
        store._pnames,
    ]


@pytest.mark.parametrize(
    ("position", "bad", "error"),
    [
        (2, np.arange(3, dtype=np.float64), TypeError),  # ts not int64
        (3, np.zeros((3, 3), dtype=np.float32), ValueError),  # values of another width
        (4, np.arange(2, dtype=np.int64), ValueError),  # offsets of another length
        (10, np.empty(3, dtype=np.int8), TypeError),  # gap not bool
        (6, (np.zeros(1, dtype=np.int64),) * 6, ValueError),  # state shorter than the slabs
        (0, ("a", "a", "a"), TypeError),  # assets not a list
    ],
)
def test_append_readings_refuses_bad_arguments(position: int, bad: Any, error: type) -> None:
    store = WindowStore(length=3, n_features=2, interval_ms=1000)
    zero = np.zeros(1, dtype=np.int64)
    store.append("a", zero, np.zeros((1, 2), np.float32), zero, 0)  # "a" tracked, at ts 0
    before = (store._count.copy(), store._head.copy(), store._last_ts.copy(), store.pending)
    args = _append_args(store, 3)
    args[position] = bad
    with pytest.raises(error):
        _speedups().append_readings(*args)
    after = (store._count, store._head, store._last_ts, store.pending)
    assert all(np.array_equal(x, y) for x, y in zip(before[:3], after[:3], strict=True))
    assert before[3] == after[3]
    # And the same arguments, put right, are taken.
    assert _speedups().append_readings(*_append_args(store, 3)) == (2, 0)  # 2 windows of 3
