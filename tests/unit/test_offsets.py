from __future__ import annotations

import random

import pytest

from monitor.offsets import CommitState, decode, encode


def test_round_trip() -> None:
    state = CommitState(scored_through=41, detector={"v": 1, "assets": {"p-1": {"m": 5}}})
    text = encode(state)
    assert text.startswith("pw1:")
    assert decode(text) == state


def test_too_large_state_is_refused() -> None:
    rng = random.Random(0)
    big = {"assets": {f"a{i}": rng.random() for i in range(2000)}}
    assert encode(CommitState(7, big), limit=512) is None
    text = encode(CommitState(7, None), limit=512)
    assert text is not None
    assert decode(text) == CommitState(7, None)


@pytest.mark.parametrize("text", [None, "", "something else", "pw1:not-base64!", "pw1:aGVsbG8="])
def test_foreign_or_broken_metadata_is_none(text: str | None) -> None:
    assert decode(text) is None
