from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.errors import DataError
from training.data import Segment
from training.windows import StandardScaler, sliding_windows, time_split, windows_from_segments


def seg(values: np.ndarray, t0: int = 0, asset: str = "x") -> Segment:
    n = len(values)
    ts = (np.arange(n, dtype=np.int64) + t0) * 1_000_000_000
    return Segment(
        asset=asset, timestamps=ts, values=values.astype(np.float32), source="f", first_row=1
    )


def test_sliding_windows_content_and_count() -> None:
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    w = sliding_windows(values, 4, 3)
    assert w.shape == (3, 4, 2)  # starts 0, 3, 6; start 9 would run past the end
    np.testing.assert_array_equal(w[1], values[3:7])
    assert np.shares_memory(w, values)  # a view, no copy


@given(
    rows=st.integers(0, 60),
    length=st.integers(1, 12),
    stride=st.integers(1, 5),
    n_features=st.integers(1, 4),
)
def test_sliding_windows_match_naive(rows: int, length: int, stride: int, n_features: int) -> None:
    values = np.random.default_rng(rows).standard_normal((rows, n_features)).astype(np.float32)
    naive = [values[i : i + length] for i in range(0, rows - length + 1, stride)]
    w = sliding_windows(values, length, stride)
    assert len(w) == len(naive)
    for got, want in zip(w, naive, strict=True):
        np.testing.assert_array_equal(got, want)


def test_windows_never_span_segments() -> None:
    a = seg(np.zeros((5, 1)))
    b = seg(np.ones((5, 1)), t0=100)
    w = windows_from_segments([a, b], 3, 1)
    assert w.shape == (6, 3, 1)
    # Every window is all zeros or all ones: none mixes the two segments.
    assert set(np.unique(w.reshape(6, -1).mean(axis=1))) == {0.0, 1.0}


def test_time_split_is_one_global_cut_without_leakage() -> None:
    a = seg(np.arange(100, dtype=np.float32)[:, None], asset="a")
    b = seg(np.arange(50, dtype=np.float32)[:, None], t0=60, asset="b")
    train, val = time_split([a, b], 0.25)
    cut_train = max(int(s.timestamps.max()) for s in train)
    cut_val = min(int(s.timestamps.min()) for s in val)
    assert cut_train < cut_val
    assert sum(len(s.timestamps) for s in train + val) == 150
    n_val = sum(len(s.timestamps) for s in val)
    assert 0.2 * 150 <= n_val <= 0.3 * 150
    # first_row follows the slice so error messages still point at the right file row.
    a_val = next(s for s in val if s.asset == "a")
    assert a_val.first_row == 1 + int(a_val.values[0, 0])


def test_scaler_uses_training_rows_only_and_normalises() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal([5.0, -3.0], [2.0, 0.5], size=(5000, 2))
    scaler = StandardScaler.fit([seg(values)], ["p", "q"])
    np.testing.assert_allclose(scaler.mean, values.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(scaler.scale, values.std(axis=0), rtol=1e-6)
    z = scaler.transform(values.astype(np.float32))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)


def test_scaler_refuses_constant_column_by_name() -> None:
    values = np.column_stack([np.arange(10.0), np.full(10, 7.0)])
    with pytest.raises(DataError, match="'q' is constant"):
        StandardScaler.fit([seg(values)], ["p", "q"])
