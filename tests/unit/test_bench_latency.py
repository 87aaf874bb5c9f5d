"""The latency benchmark's reading of the service's end-to-end histogram (cumulative buckets)."""

from __future__ import annotations

import math

import pytest

from bench.performance import _quantile, _share_within

INF = float("inf")
# 100 observations: 50 within 25 ms, 49 more within 50 ms, one within 100 ms.
BUCKETS = [(0.025, 50.0), (0.05, 99.0), (0.1, 100.0), (INF, 100.0)]


def test_share_within_a_bucket_edge_is_exact() -> None:
    assert _share_within(BUCKETS, 0.05) == 0.99
    assert _share_within(BUCKETS, 0.025) == 0.5


def test_share_within_is_unknown_without_that_edge_or_observations() -> None:
    assert math.isnan(_share_within(BUCKETS, 0.04))
    assert math.isnan(_share_within([(0.05, 0.0), (INF, 0.0)], 0.05))
    assert math.isnan(_share_within([], 0.05))


def test_quantile_interpolates_within_the_bucket_holding_it() -> None:
    assert _quantile(BUCKETS, 0.5) == pytest.approx(0.025)
    # Rank 99 is the top of the (25, 50] ms bucket; rank 99.5 half way into (50, 100].
    assert _quantile(BUCKETS, 0.99) == pytest.approx(0.05)
    assert _quantile(BUCKETS, 0.995) == pytest.approx(0.075)
