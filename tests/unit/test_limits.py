"""Hostile input at the decoders' limits: every case is rejected cleanly (a bounded reason, one
short line), quickly, and never through the decoder's internal-error path.

The cases come from bench/fuzz_decoders.py's nasty-input generators; add any finding of that
script here as a regression case.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from monitor.records import (
    INTERNAL_ERROR_DETAIL,
    Decoder,
    DecoderConfig,
    Rejection,
    encode_binary,
)

FEATURES = ("a", "b", "c")
TS = 1_767_225_600_000
DECODER = Decoder(DecoderConfig(features=FEATURES))
TIGHT = Decoder(
    DecoderConfig(
        features=FEATURES, max_message_bytes=4096, max_batch_readings=5, max_asset_id_length=16
    )
)


def _reading(**over: object) -> dict[str, object]:
    return {"asset": "x", "ts": TS, "values": [1.0, 2.0, 3.0], **over}


CASES = {
    "deeply nested list": (DECODER, b"[" * 100_000 + b"]" * 100_000, "undecodable"),
    "deeply nested object": (DECODER, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "undecodable"),
    "deep values": (
        DECODER,
        b'{"asset":"x","ts":1767225600000,"values":' + b"[" * 5000 + b"]" * 5000 + b"}",
        "undecodable",
    ),
    "5000-digit timestamp": (
        DECODER,
        b'{"asset":"x","ts":' + b"9" * 5000 + b',"values":[1,2,3]}',
        "undecodable",
    ),
    "5000-digit value": (
        DECODER,
        b'{"asset":"x","ts":1767225600000,"values":[' + b"9" * 5000 + b",2,3]}",
        "undecodable",
    ),
    "value beyond float32": (DECODER, json.dumps(_reading(values=[1e39, 2, 3])).encode(), None),
    "message over the size limit": (DECODER, b" " * 1_048_577, "oversized"),
    "batch over the length limit": (
        TIGHT,
        json.dumps([_reading(ts=TS + 1000 * i) for i in range(6)]).encode(),
        "oversized",
    ),
    "50,000 sensors": (
        DECODER,
        json.dumps(_reading(values={f"s{i}": 1.0 for i in range(50_000)})).encode(),
        None,
    ),
    "too few sensors in a list": (DECODER, json.dumps(_reading(values=[1.0])).encode(), None),
    "100,000-character asset id": (TIGHT, json.dumps(_reading(asset="p" * 100_000)).encode(), None),
    "timestamp beyond int64": (DECODER, json.dumps(_reading(ts=2**64)).encode(), None),
    "offset +99:99": (DECODER, json.dumps(_reading(ts="2026-01-01T00:00:00+99:99")).encode(), None),
    "lone surrogate asset": (
        DECODER,
        b'{"asset":"\\ud800","ts":1767225600000,"values":[1,2,3]}',
        None,
    ),
    "binary truncated": (
        DECODER,
        encode_binary(
            "x", FEATURES, np.array([TS], dtype=np.int64), np.ones((1, 3), dtype=np.float32)
        )[:-5],
        None,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_rejected_cleanly_and_quickly(name: str) -> None:
    decoder, message, reason = CASES[name]
    began = time.perf_counter()
    result = decoder.decode(b"x", message)
    took = time.perf_counter() - began
    assert isinstance(result, Rejection), result
    assert result.detail != INTERNAL_ERROR_DETAIL
    assert "\n" not in result.detail
    assert len(result.detail) <= 400
    if reason is not None:
        assert result.reason.value == reason, result
    assert took < 0.5, f"{name}: {took:.2f}s"


def _stack_depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def _deeper(frames: int, call: Callable[[], Any]) -> Any:
    return call() if frames == 0 else _deeper(frames - 1, call)


@pytest.mark.parametrize("margin", [-20, 0, 50])
def test_deep_nesting_gets_the_same_answer_from_any_call_depth(margin: int) -> None:
    """Fuzzing finding (bench/results/fuzz-findings/7b1f32f6f20d622f): a list nested nearly as
    deep as the recursion limit was "not JSON" through ``decode_many`` (a few frames deeper) but
    "a list, not a reading object" through ``decode``."""
    depth = sys.getrecursionlimit() - _stack_depth() - 10 + margin
    message = b"[" * depth + b"]" * depth
    here = DECODER.decode(None, message)
    assert isinstance(here, Rejection)
    assert _deeper(150, lambda: DECODER.decode(None, message)) == here
    batch = DECODER.decode_many([None] * 6, [message] * 6)
    assert batch.rejections == [(i, here) for i in range(6)]
