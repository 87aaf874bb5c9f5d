#!/usr/bin/env python3
"""Bounded fuzzing of the reading decoders (JSON and binary), for hostile input.

Two engines:

* ``hypothesis`` (default, always installed with the dev extra): a large randomised run of
  structure-aware inputs — valid JSON and binary messages that are then mutated (bit flips,
  truncation, splices, inserted bytes), hand-made nasty JSON (deep nesting, huge numbers, long
  strings, many sensors, odd timestamps) and raw bytes.
* ``atheris`` (coverage-guided libFuzzer, if ``pip install atheris`` is available): raw bytes
  straight into the decoders, seeded with valid messages.

Every input goes through several decoder configurations (defaults, tight limits, binary only).
A finding is an exception escaping ``Decoder.decode``, an internal-error rejection (the decoder's
catch-all, which the unit tests require never to be taken), or an accepted message that breaks an
invariant (shapes, finite values, ascending timestamps, limits). Findings are written under
``bench/results/fuzz-findings/`` as raw files; add each to tests/unit/test_limits.py.

    python bench/fuzz_decoders.py --seconds 60            # hypothesis, about a minute
    python bench/fuzz_decoders.py --engine atheris --seconds 300
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.records import (  # noqa: E402
    INTERNAL_ERROR_DETAIL,
    Decoder,
    DecoderConfig,
    Rejection,
    encode_binary,
)

FEATURES = ("flow", "pressure", "temperature", "vibration_rms")
CONFIGS = [
    DecoderConfig(features=FEATURES),
    DecoderConfig(
        features=FEATURES,
        asset_patterns=("pump-*",),
        max_message_bytes=4096,
        max_batch_readings=5,
        max_asset_id_length=16,
        allow_extra_sensors=True,
    ),
    DecoderConfig(features=FEATURES, format="binary"),
]
DECODERS = [Decoder(c) for c in CONFIGS]
FINDINGS = ROOT / "bench" / "results" / "fuzz-findings"
START_MS = 1_767_225_600_000


class FindingError(Exception):
    """A decoder bug found by the fuzzer."""


def check(key: bytes | None, data: bytes) -> None:
    """Run every decoder on one input; raise :class:`FindingError` on a bug."""
    for decoder, config in zip(DECODERS, CONFIGS, strict=True):
        try:
            result = decoder.decode(key, data)
        except BaseException as exc:  # that is the finding
            raise FindingError(f"decode raised {type(exc).__name__}: {exc}") from exc
        if isinstance(result, Rejection):
            if result.detail == INTERNAL_ERROR_DETAIL:
                raise FindingError(f"internal error rejection ({config})")
            if len(result.detail) > 400 or "\n" in result.detail:
                raise FindingError(f"detail not one short line: {result.detail[:100]!r}")
            continue
        if len(data) > config.max_message_bytes:
            raise FindingError("oversized message accepted")
        total = 0
        for block in result:
            n = len(block.ts_ms)
            total += n
            if block.values.shape != (n, len(FEATURES)) or block.values.dtype != np.float32:
                raise FindingError(f"bad block shape {block.values.shape} {block.values.dtype}")
            if not np.isfinite(block.values).all():
                raise FindingError("non-finite value accepted")
            if n > 1 and not (np.diff(block.ts_ms) > 0).all():
                raise FindingError("timestamps not strictly ascending in an accepted block")
            if len(block.asset) > config.max_asset_id_length:
                raise FindingError("asset id over the length limit accepted")
        if total > config.max_batch_readings:
            raise FindingError("batch over max_batch_readings accepted")
    check_batch(key, data)


#: A valid JSON reading placed around the fuzzed input, so that runs are long enough for
#: ``Decoder.decode_many``'s vectorised path (it decodes short runs one by one).
_NEIGHBOUR = json.dumps({"asset": "pump-9", "ts": START_MS, "values": [1, 2, 3, 4]}).encode()


def check_batch(key: bytes | None, data: bytes) -> None:
    """``decode_many`` must give, per message, exactly what ``decode`` gives."""
    values = [_NEIGHBOUR, data, _NEIGHBOUR, data, _NEIGHBOUR, _NEIGHBOUR]
    keys = [None, key, None, key, None, None]  # the neighbours' key never mismatches
    for decoder, config in zip(DECODERS, CONFIGS, strict=True):
        try:
            batch = decoder.decode_many(keys, values)
        except BaseException as exc:
            raise FindingError(f"decode_many raised {type(exc).__name__}: {exc}") from exc
        rejected = dict(batch.rejections)
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            expected = decoder.decode(k, v)
            if isinstance(expected, Rejection):
                if rejected.get(i) != expected:
                    raise FindingError(
                        f"decode_many disagrees on a rejection ({config}): "
                        f"{rejected.get(i)} != {expected}"
                    )
                continue
            if i in rejected:
                raise FindingError(f"decode_many rejected what decode accepts: {rejected[i]}")
            rows = np.flatnonzero(batch.messages == i)
            assets = [block.asset for block in expected for _ in range(len(block.ts_ms))]
            ts = np.concatenate([block.ts_ms for block in expected] or [np.empty(0, np.int64)])
            vals = np.concatenate(
                [block.values for block in expected] or [np.empty((0, len(FEATURES)), np.float32)]
            )
            if (
                [batch.assets[j] for j in rows] != assets
                or not np.array_equal(batch.ts_ms[rows], ts)
                or not np.array_equal(batch.values[rows], vals)
            ):
                raise FindingError(f"decode_many disagrees with decode on message {i} ({config})")


def seeds() -> list[bytes]:
    """Valid messages of every shape, the starting point of mutations."""
    ts = np.arange(START_MS, START_MS + 5000, 1000, dtype=np.int64)
    values = np.arange(20, dtype=np.float32).reshape(5, 4)
    reading = {"asset": "pump-1", "ts": START_MS, "values": dict.fromkeys(FEATURES, 1.5)}
    return [
        json.dumps(reading).encode(),
        json.dumps({**reading, "values": [1.0, 2.0, 3.0, 4.0]}).encode(),
        json.dumps({**reading, "ts": "2026-01-01T00:00:00Z"}).encode(),
        json.dumps([{**reading, "ts": START_MS + i * 1000} for i in range(3)]).encode(),
        encode_binary("pump-1", FEATURES, ts, values),
        encode_binary("pump-1", FEATURES, ts[:1], values[:1]),
    ]


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        op = int(rng.integers(0, 6))
        if not buf:
            buf = bytearray(rng.bytes(int(rng.integers(1, 32))))
        i = int(rng.integers(0, len(buf)))
        if op == 0:
            buf[i] ^= 1 << int(rng.integers(0, 8))
        elif op == 1:
            del buf[i:]
        elif op == 2:
            buf[i:i] = rng.bytes(int(rng.integers(1, 16)))
        elif op == 3:
            buf[i] = int(rng.choice([0, 0x7F, 0x80, 0xFF, ord("["), ord("{"), ord('"')]))
        elif op == 4:
            j = int(rng.integers(i, len(buf) + 1))
            buf[i:i] = buf[i:j]  # duplicate a slice (repeated fields, repeated rows)
        else:
            for b in rng.integers(0, len(buf), size=4).tolist():
                buf[b] = int(rng.integers(0, 256))
    return bytes(buf)


def nasty_json(rng: np.random.Generator) -> bytes:
    choice = int(rng.integers(0, 9))
    depth = int(rng.integers(1, 3000))
    if choice == 0:
        return b"[" * depth + b"]" * depth
    if choice == 1:
        return b'{"asset":"pump-1","ts":' + b"9" * depth + b',"values":[1,2,3,4]}'
    if choice == 2:
        return json.dumps({"asset": "p" * depth, "ts": START_MS, "values": [1, 2, 3, 4]}).encode()
    if choice == 3:
        sensors = {f"s{i}": 1.0 for i in range(depth)}
        return json.dumps({"asset": "pump-1", "ts": START_MS, "values": sensors}).encode()
    if choice == 4:
        rows = [
            {"asset": "pump-1", "ts": START_MS + i, "values": [1, 2, 3, 4]} for i in range(depth)
        ]
        return json.dumps(rows).encode()
    if choice == 5:
        value = float(rng.choice([1e308, -1e308, 1e39, 3.5e38, -3.5e38, 1e-46, 0.0]))
        return json.dumps({"asset": "pump-1", "ts": START_MS, "values": [value] * 4}).encode()
    if choice == 6:
        stamps = [
            *("2026-01-01T00:00:00+99:99", "0001-01-01T00:00:00Z", "2026-02-30T00:00:00Z"),
            *("9999-12-31T23:59:59.999999999Z", "", "1e3", "NaN"),
        ]
        stamp = stamps[int(rng.integers(0, len(stamps)))]
        return json.dumps({"asset": "pump-1", "ts": str(stamp), "values": [1, 2, 3, 4]}).encode()
    if choice == 7:
        ts = int(rng.choice([-(2**63), 2**63 - 1, 2**64, -1, 0, 10**13, 10**16]))
        return json.dumps({"asset": "pump-1", "ts": ts, "values": [1, 2, 3, 4]}).encode()
    return b'{"asset":"pump-1","ts":1767225600000,"values":{"flow":1,"flow":2}}'


def record(key: bytes | None, data: bytes, finding: FindingError) -> Path:
    FINDINGS.mkdir(parents=True, exist_ok=True)
    path = FINDINGS / f"{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(f"key={key!r}\n{finding}\n")
    return path


def run_random(seconds: float, seed: int) -> tuple[int, list[Path]]:
    """Structure-aware random search (numpy RNG; bounded by ``seconds``)."""
    rng = np.random.default_rng(seed)
    pool = seeds()
    keys: list[bytes | None] = [b"pump-1", None, b"", b"other", b"\xff\xfe"]
    done, found = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        kind = int(rng.integers(0, 10))
        if kind < 6:
            data = mutate(pool[int(rng.integers(0, len(pool)))], rng)
        elif kind < 9:
            data = nasty_json(rng)
        else:
            data = rng.bytes(int(rng.integers(0, 256)))
        key = keys[int(rng.integers(0, len(keys)))]
        try:
            check(key, data)
        except FindingError as finding:
            found.append(record(key, data, finding))
        done += 1
    return done, found


def run_hypothesis(examples: int, seed: int) -> tuple[int, list[Path]]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    found: list[Path] = []
    count = 0
    pool = seeds()

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        base=st.sampled_from(pool),
        cut=st.integers(0, 400),
        insert=st.binary(max_size=24),
        key=st.sampled_from([b"pump-1", None, b"x"]),
    )
    def prop(base: bytes, cut: int, insert: bytes, key: bytes | None) -> None:
        nonlocal count
        count += 1
        data = base[:cut] + insert + base[cut:]
        try:
            check(key, data)
        except FindingError as finding:
            found.append(record(key, data, finding))

    prop()
    return count, found


def run_atheris(seconds: float) -> None:
    import atheris  # type: ignore[import-not-found]

    def target(data: bytes) -> None:
        check(b"pump-1", data)  # a Finding propagates: atheris saves the crash input

    # Coverage feedback: without instrumenting the decoder's bytecode libFuzzer mutates blind
    # (its corpus never grows past one input).
    atheris.instrument_all()
    corpus = ROOT / ".fuzz" / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds()):
        (corpus / f"seed-{i}").write_bytes(data)
    FINDINGS.mkdir(parents=True, exist_ok=True)
    atheris.Setup(
        [
            sys.argv[0],
            str(corpus),
            f"-max_total_time={int(seconds)}",
            "-max_len=65536",
            f"-artifact_prefix={FINDINGS}/",
            "-print_final_stats=1",
        ],
        target,
    )
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--engine", choices=["hypothesis", "atheris"], default="hypothesis")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--examples", type=int, default=20_000, help="hypothesis examples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, python {platform.python_version()}")
    if args.engine == "atheris":
        run_atheris(args.seconds)
        return 0
    began = time.monotonic()
    n_random, found = run_random(args.seconds, args.seed)
    n_hyp, found_h = run_hypothesis(args.examples, args.seed)
    found += found_h
    took = time.monotonic() - began
    print(
        f"{n_random} structure-aware random inputs + {n_hyp} hypothesis examples in {took:.0f}s, "
        f"{len(CONFIGS)} decoder configurations each: {len(found)} finding(s)"
    )
    for path in found[:20]:
        print(f"  {path} ({path.with_suffix('.txt').read_text().splitlines()[1]})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
