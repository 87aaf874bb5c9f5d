from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor import native
from monitor.windows import AppendResult, ReadyBatch, WindowStore

I = 1000  # noqa: E741 - the sampling interval, as in the docs


def arrays(
    ts: list[int], values: np.ndarray | None = None, offsets: list[int] | None = None, f: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(ts, dtype=np.int64)
    if values is None:
        values = np.stack([t.astype(np.float32) + k / 10 for k in range(f)], axis=1)
    o = np.asarray(offsets if offsets is not None else ts, dtype=np.int64)
    return t, np.asarray(values, dtype=np.float32).reshape(len(ts), -1), o


def put(store: WindowStore, asset: str, ts: list[int], partition: int = 0, **kw: Any) -> Any:
    t, v, o = arrays(ts, f=store.n_features, **kw)
    return store.append(asset, t, v, o, partition)


# -- the reference model: a plain per-asset list, one reading at a time -------------------------


@dataclass
class RefAsset:
    partition: int
    run: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (values, offset)
    last_ts: int | None = None
    since: int | None = None  # real readings since the last scored one; None: none scored yet


class Reference:
    def __init__(self, *, length: int, interval_ms: int, max_gap_steps: int, stride: int,
                 max_assets: int, overflow: str, gap_tolerance: float) -> None:  # fmt: skip
        self.L, self.I, self.max_gap, self.stride = length, interval_ms, max_gap_steps, stride
        self.cap, self.overflow, self.tol = max_assets, overflow, gap_tolerance
        self.assets: dict[str, RefAsset] = {}  # insertion order = least recently updated first
        self.pending: list[tuple[str, np.ndarray, int, int, int, int]] = []
        self.evictions = 0

    def append(
        self, asset: str, ts: list[int], values: np.ndarray, offsets: list[int], partition: int
    ) -> AppendResult:
        if not ts:
            return AppendResult(0)
        a = self.assets.get(asset)
        if a is None:
            if len(self.assets) >= self.cap:
                if self.overflow == "reject":
                    return AppendResult(0, asset_limit=len(ts))
                del self.assets[next(iter(self.assets))]
                self.evictions += 1
            a = self.assets[asset] = RefAsset(partition)
        a.partition = partition
        accepted = dup = ooo = carried = resets = ready = 0
        for t, v, o in zip(ts, values, offsets, strict=True):
            if a.last_ts is not None and t <= a.last_ts:
                dup += t == a.last_ts
                ooo += t < a.last_ts
                continue
            accepted += 1
            if a.last_ts is not None and t - a.last_ts > (1 + self.tol) * self.I:
                missing = max(1, math.floor(Fraction(t - a.last_ts, self.I) + Fraction(1, 2)) - 1)
                if missing > self.max_gap:
                    a.run, a.since = [], None
                    resets += 1
                else:
                    a.run.extend([a.run[-1]] * missing)
                    carried += missing
            a.run.append((v, o))
            a.last_ts = t
            if a.since is not None:
                a.since += 1
            if len(a.run) >= self.L and (a.since is None or a.since >= self.stride):
                win = a.run[-self.L :]
                self.pending.append(
                    (asset, np.stack([w[0] for w in win]), t, partition, o, win[0][1])
                )
                a.since = 0
                ready += 1
        if accepted:
            self.assets[asset] = self.assets.pop(asset)
        return AppendResult(accepted, dup, ooo, 0, carried, resets, ready)

    def min_needed_offset(self, partition: int) -> int | None:
        needed = [
            a.run[-min(len(a.run), self.L - 1) :][0][1]
            for a in self.assets.values()
            if a.partition == partition
        ]
        return min(needed, default=None)

    def forget_partition(self, partition: int) -> int:
        gone = [name for name, a in self.assets.items() if a.partition == partition]
        for name in gone:
            del self.assets[name]
        self.pending = [p for p in self.pending if p[3] != partition]
        return len(gone)

    def collect(self) -> list[tuple[str, np.ndarray, int, int, int, int]]:
        out, self.pending = self.pending, []
        return out


def assert_same(
    batch: ReadyBatch, expected: list[tuple[str, np.ndarray, int, int, int, int]]
) -> None:
    assert len(batch) == len(expected)
    assert batch.windows.dtype == np.float32
    assert batch.windows.flags.c_contiguous
    assert batch.assets == [e[0] for e in expected]
    assert batch.ts_ms.tolist() == [e[2] for e in expected]
    assert batch.partitions.tolist() == [e[3] for e in expected]
    assert batch.offsets.tolist() == [e[4] for e in expected]
    assert batch.first_offsets.tolist() == [e[5] for e in expected]
    if expected:
        np.testing.assert_array_equal(batch.windows, np.stack([e[1] for e in expected]))


STEPS = [I, I, I, I, I - I // 4, I + I // 4, I * 3 // 2, I * 3 // 2 + 1, 2 * I, 3 * I, 4 * I,
         5 * I, 9 * I]  # fmt: skip
BACKS = [0, 0, 0, 0, I, 2 * I, 3 * I + 7]

step = st.sampled_from(STEPS)
append_op = st.tuples(
    st.just("append"),
    st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4]),  # asset; 3 and 4 mostly press on the cap
    # Steps between readings: often a single reading (the service's common case), or a block.
    st.one_of(st.lists(step, min_size=1, max_size=1), st.lists(step, max_size=12)),
    st.sampled_from(BACKS),  # how far the block starts before the asset's latest timestamp
    st.integers(0, 2),  # partition (mostly stable per asset, see below)
    st.booleans(),  # one offset for the whole block (a batch message) or one per reading
)
other_op = st.one_of(
    st.tuples(st.just("collect")),
    st.tuples(st.just("offsets")),
    st.tuples(st.just("forget"), st.integers(0, 2)),
)
params = st.fixed_dictionaries(
    {
        "length": st.integers(2, 5),
        "n_features": st.integers(1, 3),
        "interval_ms": st.just(I),
        "max_gap_steps": st.integers(0, 3),
        "stride": st.integers(1, 3),
        "max_assets": st.integers(1, 5),
        "overflow": st.sampled_from(["reject", "evict_idle"]),
        "gap_tolerance": st.sampled_from([0.5, 0.25, 1.0]),
    }
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    p=params,
    slab_size=st.integers(1, 3),
    ops=st.lists(st.one_of(append_op, append_op, append_op, other_op), min_size=20, max_size=80),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_reference_model(
    p: dict[str, Any], slab_size: int, ops: list[Any], seed: int
) -> None:
    store = WindowStore(**p, slab_size=slab_size)
    ref = Reference(**{k: v for k, v in p.items() if k != "n_features"})
    rng = np.random.default_rng(seed)
    cursor: dict[int, int] = {}
    next_offset = [0, 0, 0]
    for op in ops:
        if op[0] == "append":
            _, a, steps, back, part_pick, one_offset = op
            # Assets usually stay on one partition; part_pick == 2 moves asset 0 around.
            part = part_pick if a == 0 else a % 2
            t = cursor.get(a, 10 * I) - back
            ts = []
            for s in steps:
                t += s
                ts.append(t)
            if ts:
                cursor[a] = max(cursor.get(a, 0), ts[-1])
            n = len(ts)
            values = rng.standard_normal((n, p["n_features"])).astype(np.float32)
            base = next_offset[part]
            offsets = [base] * n if one_offset else list(range(base, base + n))
            next_offset[part] += n + 1
            got = store.append(
                f"a{a}",
                np.asarray(ts, dtype=np.int64),
                values,
                np.asarray(offsets, dtype=np.int64),
                part,
            )
            assert got == ref.append(f"a{a}", ts, values, offsets, part)
        elif op[0] == "collect":
            assert_same(store.collect(), ref.collect())
        elif op[0] == "offsets":
            for part in range(3):
                assert store.min_needed_offset(part) == ref.min_needed_offset(part)
            expected = {q: ref.min_needed_offset(q) for q in range(3)}
            assert store.min_needed_offsets() == {
                q: v for q, v in expected.items() if v is not None
            }
        else:
            assert store.forget_partition(op[1]) == ref.forget_partition(op[1])
        assert len(store) == len(ref.assets) <= p["max_assets"]
        assert store.pending == len(ref.pending)
    assert store.stats().evictions == ref.evictions
    assert_same(store.collect(), ref.collect())


# -- examples --------------------------------------------------------------------------------


def test_one_block_makes_every_window_ready() -> None:
    store = WindowStore(length=8, n_features=3, interval_ms=I)
    ts = [k * I for k in range(100)]
    t, v, o = arrays(ts, f=3)
    assert store.append("p1", t, v, o, 4) == AppendResult(100, ready=93)
    batch = store.collect()
    assert batch.windows.shape == (93, 8, 3)
    np.testing.assert_array_equal(batch.windows[0], v[:8])
    np.testing.assert_array_equal(batch.windows[-1], v[-8:])
    assert batch.ts_ms.tolist() == ts[7:]
    assert batch.first_offsets.tolist() == ts[:93]
    assert set(batch.partitions.tolist()) == {4}
    assert len(store.collect()) == 0


def test_single_readings_and_blocks_agree() -> None:
    a = WindowStore(length=4, n_features=2, interval_ms=I)
    b = WindowStore(length=4, n_features=2, interval_ms=I)
    ts = [k * I for k in range(20)]
    for t in ts:
        put(a, "x", [t])
    put(b, "x", ts[:3])
    put(b, "x", ts[3:11])
    put(b, "x", ts[11:])
    wa, wb = a.collect(), b.collect()
    assert len(wa) == 17
    np.testing.assert_array_equal(wa.windows, wb.windows)
    assert wa.first_offsets.tolist() == wb.first_offsets.tolist()


def test_collected_batch_survives_later_appends() -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I)
    put(store, "x", [0, I])
    batch = store.collect()
    before = batch.windows.copy()
    put(store, "x", [k * I for k in range(2, 50)])
    np.testing.assert_array_equal(batch.windows, before)


def test_stride_counts_real_readings_from_the_first_full_window() -> None:
    store = WindowStore(length=3, n_features=1, interval_ms=I, stride=2)
    ready = [put(store, "x", [k * I]).ready for k in range(9)]
    # Readings 0-1 fill the window; reading 2 completes it and scores, then every 2nd.
    assert ready == [0, 0, 1, 0, 1, 0, 1, 0, 1]
    assert store.collect().ts_ms.tolist() == [2 * I, 4 * I, 6 * I, 8 * I]


def test_carried_readings_fill_the_window_but_do_not_score() -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I, max_gap_steps=2)
    put(store, "x", [0, I, 2 * I], offsets=[10, 11, 12])
    got = put(store, "x", [5 * I], offsets=[13])  # 2 missing readings, carried forward
    assert got == AppendResult(1, carried=2, ready=1)
    batch = store.collect()
    # The window ends with the real reading; the two carried ones repeat the value at 2·I and
    # carry its offset.
    assert batch.windows[:, :, 0].tolist() == [[2000.0, 2000.0, 2000.0, 5000.0]]
    assert batch.first_offsets.tolist() == [12]
    assert store.min_needed_offset(0) == 12  # the carried readings need offset 12 to rebuild


def test_long_gap_resets_the_window() -> None:
    store = WindowStore(length=3, n_features=1, interval_ms=I, max_gap_steps=1)
    put(store, "x", [0, I, 2 * I])
    got = put(store, "x", [10 * I, 11 * I])
    assert got == AppendResult(2, resets=1)
    assert got.reset
    assert put(store, "x", [12 * I]).ready == 1
    assert store.collect().ts_ms.tolist() == [2 * I, 12 * I]
    assert store.stats().resets == 1


@pytest.mark.parametrize(
    ("dt", "carried", "resets"),
    [
        (1500, 0, 0),  # exactly 1.5 intervals: jitter, not a gap
        (1501, 1, 0),  # rounds to 2 steps: one missing reading
        (2499, 1, 0),
        (2500, 2, 0),  # halves round up
        (4000, 3, 0),
        (4500, 0, 1),  # 4 missing > max_gap_steps
    ],
)
def test_gap_rounding(dt: int, carried: int, resets: int) -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I, max_gap_steps=3)
    put(store, "x", [0])
    got = put(store, "x", [dt])
    assert (got.carried, got.resets) == (carried, resets)


def test_duplicate_and_out_of_order_readings_are_a_dropped_prefix() -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I)
    put(store, "x", [0, I, 2 * I])
    got = put(store, "x", [0, I, 2 * I, 3 * I, 4 * I])
    assert got == AppendResult(2, duplicate_timestamp=1, out_of_order=2, ready=2)
    assert got.reasons() == {"duplicate_timestamp": 1, "out_of_order": 2}
    assert put(store, "x", [4 * I]) == AppendResult(0, duplicate_timestamp=1)
    assert put(store, "x", [I]) == AppendResult(0, out_of_order=1)
    s = store.stats()
    assert (s.rejected_duplicate_timestamp, s.rejected_out_of_order) == (2, 3)


def test_asset_cap_reject() -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I, max_assets=2)
    put(store, "a", [0])
    put(store, "b", [0])
    got = put(store, "c", [0, I])
    assert got == AppendResult(0, asset_limit=2)
    assert got.reasons() == {"asset_limit": 2}
    assert "c" not in store
    assert put(store, "a", [I]).ready == 1  # known assets keep working
    assert store.stats().rejected_asset_limit == 2


def test_asset_cap_evicts_least_recently_updated() -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I, max_assets=2, overflow="evict_idle")
    put(store, "a", [0])
    put(store, "b", [0])
    put(store, "a", [I])  # b is now the idle one
    put(store, "c", [0])
    assert ("a" in store, "b" in store, "c" in store) == (True, False, True)
    assert store.stats().evictions == 1
    # b comes back evicting a, and starts a fresh window.
    assert put(store, "b", [I]).ready == 0
    assert "a" not in store
    assert store.stats().evictions == 2


def test_min_needed_offset_and_forget_partition() -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I)
    put(store, "a", [0, I, 2 * I, 3 * I, 4 * I], partition=0, offsets=[1, 2, 3, 4, 5])
    put(store, "b", [0], partition=0, offsets=[7])
    put(store, "c", [0, I], partition=1, offsets=[20, 21])
    assert store.min_needed_offset(0) == 3  # a keeps its last 3 readings: offsets 3, 4, 5
    assert store.min_needed_offset(1) == 20
    assert store.min_needed_offset(2) is None
    assert store.min_needed_offsets() == {0: 3, 1: 20}
    put(store, "b", [I, 2 * I, 3 * I, 4 * I], partition=0, offsets=[8, 9, 10, 11])
    assert store.min_needed_offset(0) == 3
    put(store, "a", [5 * I], partition=0, offsets=[12])
    assert store.min_needed_offset(0) == 4
    put(store, "c", [2 * I], partition=0, offsets=[13])  # c is counted on its last partition
    assert store.min_needed_offset(1) is None
    assert store.min_needed_offset(0) == 4
    assert store.pending == 5
    assert store.forget_partition(0) == 3
    assert len(store) == 0
    assert store.pending == 0  # a's windows went with the partition
    assert store.min_needed_offset(0) is None


def test_forget_partition_keeps_other_pending_windows() -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I)
    put(store, "a", [0, I, 2 * I], partition=0)
    put(store, "b", [0, I], partition=1)
    put(store, "a", [3 * I], partition=0)
    store.forget_partition(0)
    batch = store.collect()
    assert batch.assets == ["b"]
    assert batch.ts_ms.tolist() == [I]
    # The freed slot is reused.
    put(store, "c", [0])
    assert store.stats().slabs == 1


def test_memory_grows_by_slabs() -> None:
    L, F, S = 64, 16, 4
    store = WindowStore(length=L, n_features=F, interval_ms=I, slab_size=S)
    assert store.nbytes == 0
    per_asset = 2 * L * F * 4 + L * 8
    for k in range(S + 1):
        put(store, f"a{k}", [0])
    assert store.stats().slabs == 2
    assert store.nbytes == 2 * S * per_asset
    store.reset()
    assert (len(store), store.nbytes, store.pending) == (0, 0, 0)


def test_pending_grows_past_initial_capacity() -> None:
    store = WindowStore(length=2, n_features=1, interval_ms=I)
    ts = [k * I for k in range(1001)]
    put(store, "x", ts[:600])
    put(store, "x", ts[600:])
    batch = store.collect()
    assert len(batch) == 1000
    assert batch.windows[:, 1, 0].tolist() == [float(t) for t in ts[1:]]


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="length"):
        WindowStore(length=1, n_features=1, interval_ms=I)
    with pytest.raises(ValueError, match="overflow"):
        WindowStore(length=2, n_features=1, interval_ms=I, overflow="drop")  # type: ignore[arg-type]
    store = WindowStore(length=2, n_features=2, interval_ms=I)
    t, v, o = arrays([0, I], f=2)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        store.append("x", t, v[:, :1], o, 0)
    with pytest.raises(ValueError, match="float32"):
        store.append("x", t, v.astype(np.float64), o, 0)
    with pytest.raises(ValueError, match="increase"):
        store.append("x", t[::-1].copy(), v, o, 0)
    assert store.append("x", t[:0], v[:0], o[:0], 0) == AppendResult(0)
    assert "x" not in store


# -- append_many: many assets at once, the same as one reading at a time ------------------------

many_op = st.tuples(
    st.just("many"),
    # (asset, step, back) per reading, interleaving assets as a getmany batch does.
    st.lists(
        st.tuples(
            st.sampled_from([0, 0, 1, 1, 2, 3, 4]),
            step,
            st.sampled_from([0, 0, 0, 0, 0, 0, I, 2 * I]),
        ),
        max_size=40,
    ),
    st.integers(0, 1),  # partition
)


@contextlib.contextmanager
def append_path(path: str) -> Iterator[None]:
    """append_many's native pass (the C extension) or its numpy path."""
    if path == "native":
        assert native.speedups is not None, native.describe()
        yield
    else:
        with mock.patch.object(native, "speedups", None):
            yield


@pytest.mark.parametrize("path", ["native", "numpy"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    p=params,
    slab_size=st.integers(1, 3),
    ops=st.lists(st.one_of(many_op, many_op, append_op, other_op), min_size=10, max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_append_many_matches_reference_model(
    path: str, p: dict[str, Any], slab_size: int, ops: list[Any], seed: int
) -> None:
    """append_many == the reference fed one reading at a time (windows in the same order);
    when it declines (a rejection or the asset cap), nothing changed and block by block does."""
    with append_path(path):
        check_append_many(p, slab_size, ops, seed)


def check_append_many(p: dict[str, Any], slab_size: int, ops: list[Any], seed: int) -> None:
    store = WindowStore(**p, slab_size=slab_size)
    ref = Reference(**{k: v for k, v in p.items() if k != "n_features"})
    rng = np.random.default_rng(seed)
    cursor: dict[int, int] = {}
    next_offset = [0, 0, 0]
    declined = 0
    for op in ops:
        if op[0] == "many":
            _, readings, part = op
            names, ts = [], []
            for a, s, back in readings:
                cursor[a] = cursor.get(a, 10 * I) + s - back
                names.append(f"a{a}")
                ts.append(cursor[a])
            n = len(ts)
            values = rng.standard_normal((n, p["n_features"])).astype(np.float32)
            offsets = list(range(next_offset[part], next_offset[part] + n))
            next_offset[part] += n + 1
            before = (len(store), store.pending, store.stats())
            got = store.append_many(
                names,
                np.asarray(ts, dtype=np.int64),
                values,
                np.asarray(offsets, dtype=np.int64),
                part,
            )
            expected = [
                ref.append(names[k], [ts[k]], values[k : k + 1], [offsets[k]], part)
                for k in range(n)
            ]
            if got is None:
                declined += 1
                assert (len(store), store.pending, store.stats()) == before
                for k in range(n):
                    t, v, o = arrays([ts[k]], values[k : k + 1], [offsets[k]])
                    assert store.append(names[k], t, v, o, part) == expected[k]
            else:
                assert not any(r.rejected for r in expected)
                assert got.accepted == n
                assert got.carried == sum(r.carried for r in expected)
                assert got.resets == sum(r.resets for r in expected)
                assert got.ready == sum(r.ready for r in expected)
        elif op[0] == "append":
            _, a, steps, back, part_pick, one_offset = op
            part = part_pick if a == 0 else a % 2
            t = cursor.get(a, 10 * I) - back
            ts = []
            for s in steps:
                t += s
                ts.append(t)
            if ts:
                cursor[a] = max(cursor.get(a, 0), ts[-1])
            n = len(ts)
            values = rng.standard_normal((n, p["n_features"])).astype(np.float32)
            base = next_offset[part]
            offsets = [base] * n if one_offset else list(range(base, base + n))
            next_offset[part] += n + 1
            t_, o_ = np.asarray(ts, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
            assert store.append(f"a{a}", t_, values, o_, part) == ref.append(
                f"a{a}", ts, values, offsets, part
            )
        elif op[0] == "collect":
            assert_same(store.collect(), ref.collect())
        elif op[0] == "offsets":
            expected_offsets = {q: ref.min_needed_offset(q) for q in range(3)}
            assert store.min_needed_offsets() == {
                q: v for q, v in expected_offsets.items() if v is not None
            }
        else:
            assert store.forget_partition(op[1]) == ref.forget_partition(op[1])
        if p["overflow"] == "evict_idle":  # the same least-recently-updated order
            assert list(store._assets) == list(ref.assets)
        else:
            assert set(store._assets) == set(ref.assets)
        assert store.pending == len(ref.pending)
    assert store.stats().evictions == ref.evictions
    assert_same(store.collect(), ref.collect())


def test_append_many_takes_the_native_pass_once_assets_are_known() -> None:
    """The native pass does the work once every asset is tracked; a new asset, a gap and a
    rejection are what it hands back (the numpy path admits, the block path carries, the
    caller attributes), and the windows are those of the numpy path."""
    assert native.speedups is not None, native.describe()
    fast = native.speedups
    results: list[tuple[int, int] | int | None] = []

    def spy(*args: Any) -> tuple[int, int] | int | None:
        got = fast.append_readings(*args)
        results.append(got)
        return got

    stores = {path: WindowStore(length=3, n_features=2, interval_ms=I) for path in ("n", "p")}
    rng = np.random.default_rng(7)
    calls = [
        (["a", "b"] * 3, [0, 0, 1, 1, 2, 2]),  # nothing tracked yet: the numpy path
        (["b", "a"] * 3, [3, 3, 4, 4, 5, 5]),  # native: 6 windows
        (["a", "c"], [6, 0]),  # c is new: handed back, the numpy path admits it
        (["a", "b", "a"], [7, 6, 11]),  # native for b; a's gap goes to its block path
        (["b", "b"], [7, 7]),  # a duplicate timestamp: declined, nothing changed
    ]
    for names, steps in calls:
        ts = np.asarray(steps, dtype=np.int64) * I
        values = rng.standard_normal((len(ts), 2)).astype(np.float32)
        offsets = np.arange(len(ts), dtype=np.int64) + int(ts[0])
        with mock.patch.object(native, "speedups", mock.Mock(wraps=fast, append_readings=spy)):
            got_n = stores["n"].append_many(names, ts, values, offsets, 0)
        with append_path("numpy"):
            got_p = stores["p"].append_many(names, ts, values, offsets, 0)
        assert got_n == got_p
        native_batch, numpy_batch = stores["n"].collect(), stores["p"].collect()
        assert native_batch.assets == numpy_batch.assets
        for name in ("windows", "ts_ms", "partitions", "offsets", "first_offsets"):
            assert np.array_equal(getattr(native_batch, name), getattr(numpy_batch, name)), name
    # (windows, readings left for the gap path); None: an unknown asset; -1: declined
    assert results == [(6, 0), None, (1, 2), -1]
    assert stores["n"].stats() == stores["p"].stats()
    assert stores["n"].stats().carried == 3


def test_append_many_interleaved_assets_in_one_call() -> None:
    store = WindowStore(length=3, n_features=1, interval_ms=I)
    names = ["a", "b"] * 4
    ts = np.repeat(np.arange(4, dtype=np.int64) * I, 2)
    values = np.arange(8, dtype=np.float32).reshape(8, 1)
    got = store.append_many(names, ts, values, np.arange(8, dtype=np.int64), 0)
    assert got == AppendResult(8, ready=4)
    batch = store.collect()
    assert batch.assets == ["a", "b", "a", "b"]
    assert batch.windows[:, :, 0].tolist() == [[0, 2, 4], [1, 3, 5], [2, 4, 6], [3, 5, 7]]
    assert batch.first_offsets.tolist() == [0, 1, 2, 3]
    # A duplicate timestamp declines the whole call and changes nothing.
    assert (
        store.append_many(["a", "a"], ts[6:8] + I, values[:2], np.arange(2, dtype=np.int64), 0)
        is None
    )
    assert store.collect().assets == []


def _stream(store: WindowStore, asset: str, steps: range, *, partition: int = 0) -> None:
    """One reading per step at ``step * I`` with offset ``1000 * step`` (+ an asset-specific
    small number so offsets stay unique)."""
    for step in steps:
        put(store, asset, [step * I], partition=partition, offsets=[1000 * step + ord(asset[-1])])


@pytest.mark.parametrize("timeout_steps", [None, 30])
def test_a_quiet_asset_stops_holding_the_commit_back_after_the_idle_timeout(
    timeout_steps: int | None,
) -> None:
    # The soak run found it: 2,000 one-off asset ids pinned every partition's commit, so each
    # restart re-read 15 minutes of the stream.
    store = WindowStore(
        length=4,
        n_features=1,
        interval_ms=I,
        idle_timeout_ms=None if timeout_steps is None else timeout_steps * I,
    )
    _stream(store, "one-off", range(0, 1))  # one reading at step 0, offset 0 + ord("f")
    _stream(store, "a", range(0, 20))
    _stream(store, "b", range(0, 20))
    # Still within the timeout: the one-off asset's reading is needed to rebuild its window.
    assert store.min_needed_offset(0) == ord("f")
    _stream(store, "a", range(20, 100))
    _stream(store, "b", range(20, 100))
    if timeout_steps is None:
        assert store.min_needed_offset(0) == ord("f")  # pinned for ever
    else:
        # Only a's and b's last 3 readings (steps 97..99) are needed now.
        assert store.min_needed_offset(0) == 1000 * 97 + ord("a")
        assert store.min_needed_offsets() == {0: 1000 * 97 + ord("a")}


def test_idle_timeout_clock_is_the_median_not_one_asset_far_ahead() -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=30 * I)
    _stream(store, "a", range(0, 10))
    _stream(store, "b", range(0, 10))
    # One asset whose clock is a year ahead must not make every other asset look idle.
    put(store, "z", [365 * 86_400 * I], offsets=[99_999])
    assert store.min_needed_offset(0) == 1000 * 7 + ord("a")


def test_idle_timeout_is_per_partition() -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=5 * I)
    _stream(store, "a", range(0, 50), partition=0)
    # Partition 1's only asset is far behind partition 0's clock, but it is its own partition's
    # clock: it still holds partition 1 back.
    _stream(store, "c", range(0, 3), partition=1)
    assert store.min_needed_offsets() == {0: 1000 * 47 + ord("a"), 1: ord("c")}


def test_idle_timeout_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="idle_timeout_ms must be >= 0"):
        WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=-1)


# -- expiry of silent assets --------------------------------------------------------------------


def _live(store: WindowStore, assets: str, steps: range) -> None:
    for step in steps:
        for asset in assets:
            put(store, asset, [step * I], offsets=[1000 * step + ord(asset[-1])])


def test_expire_idle_drops_one_off_assets_and_frees_their_places() -> None:
    # The second soak found it: a flood of one-off ids stayed tracked (memory, max_assets places
    # and per-batch work) until the next rebalance.
    store = WindowStore(length=4, n_features=1, interval_ms=I, max_assets=4, idle_timeout_ms=30 * I)
    _live(store, "ab", range(0, 10))
    put(store, "one-off-1", [5 * I], offsets=[7])
    put(store, "one-off-2", [6 * I], offsets=[8])
    assert put(store, "newcomer", [10 * I]).asset_limit == 1  # the cap is full
    assert store.expire_idle() == []  # a first call only starts the clock
    _live(store, "ab", range(10, 30))
    assert store.expire_idle() == []  # silent for a period, but not 30 s behind yet
    _live(store, "ab", range(30, 50))
    assert store.expire_idle() == ["one-off-1", "one-off-2"]
    assert len(store) == 2
    assert "one-off-1" not in store
    assert store.stats().expired == 2
    assert put(store, "newcomer", [50 * I]).accepted == 1  # the freed place is used again
    assert store.min_needed_offsets() == {0: 1000 * 47 + ord("a")}


def test_expire_idle_keeps_assets_appended_to_since_the_last_call() -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=30 * I)
    _live(store, "ab", range(0, 100))
    _live(store, "s", range(0, 10))
    store.expire_idle()
    # "s" runs on a clock 90 s behind the others but reports all the time: not silent.
    for step in range(10, 20):
        _live(store, "ab", range(90 + step, 91 + step))
        _live(store, "s", range(step, step + 1))
        assert store.expire_idle() == []
    assert "s" in store


def test_expire_idle_keeps_everything_when_nothing_arrives() -> None:
    # A stalled consumer (broker down) appends to nobody: no one is behind the others.
    store = WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=0)
    _live(store, "abc", range(0, 10))
    for _ in range(3):
        assert store.expire_idle() == []
    assert len(store) == 3


def test_expire_idle_waits_for_a_gap_that_resets_the_window_anyway() -> None:
    # idle_timeout 1 interval, but a gap of up to max_gap_steps readings is carried forward:
    # only assets silent longer than that are dropped, so a returning one loses nothing.
    store = WindowStore(
        length=4, n_features=1, interval_ms=I, max_gap_steps=3, idle_timeout_ms=1 * I
    )
    _live(store, "ab", range(0, 10))
    store.expire_idle()
    _live(store, "a", range(10, 14))  # b silent for 4 intervals: still carried forward
    assert store.expire_idle() == []
    _live(store, "a", range(14, 16))  # 6 behind: a gap of 5 missing readings resets anyway
    assert store.expire_idle() == ["b"]


@pytest.mark.parametrize("expire", [False, True])
def test_an_expired_asset_that_returns_gets_the_same_windows(expire: bool) -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=20 * I)
    _live(store, "ab", range(0, 10))
    store.collect()
    if expire:
        store.expire_idle()
    _live(store, "a", range(10, 40))
    if expire:
        assert store.expire_idle() == ["b"]
    _live(store, "ab", range(40, 50))
    batch = store.collect()
    # As a long gap would: b's window starts over and scores again from its 4th reading.
    scored_b = [t // I for a, t in zip(batch.assets, batch.ts_ms.tolist(), strict=True) if a == "b"]
    assert scored_b == list(range(43, 50))
    assert store.stats().resets == (0 if expire else 1)


def test_no_expiry_without_an_idle_timeout() -> None:
    store = WindowStore(length=4, n_features=1, interval_ms=I)
    _live(store, "ab", range(0, 10))
    store.expire_idle()
    _live(store, "a", range(10, 10_000, 100))
    assert store.expire_idle() == []
    assert len(store) == 2


@pytest.mark.parametrize("replay", [True, False])
def test_replayed_readings_do_not_count_as_an_asset_reporting(replay: bool) -> None:
    # The session-4 soak found it: a rebalance re-reads every partition from its commit, which
    # one-off ids held back; counted as them reporting, the replay kept them (and the commit)
    # alive through every rebalance that came sooner than two expiry periods.
    store = WindowStore(length=4, n_features=1, interval_ms=I, idle_timeout_ms=30 * I)

    def history(asset: str, steps: range) -> None:
        for step in steps:
            t, v, o = arrays([step * I], f=1, offsets=[1000 * step + ord(asset[-1])])
            store.append(asset, t, v, o, 0, replay=replay)

    history("one-off", range(5, 6))
    history("a", range(0, 50))
    many = store.append_many(
        ["b"] * 50,
        np.arange(50, dtype=np.int64) * I,
        np.zeros((50, 1), dtype=np.float32),
        np.arange(50, dtype=np.int64),
        0,
        replay=replay,
    )
    assert many is not None
    assert many.accepted == 50
    _live(store, "ab", range(50, 60))  # what arrives after the replay
    assert store.expire_idle() == (["one-off"] if replay else [])
    assert sorted(a for a in ("a", "b", "one-off") if a in store) == (
        ["a", "b"] if replay else ["a", "b", "one-off"]
    )


@pytest.mark.parametrize("overflow", ["reject", "evict_idle"])
@pytest.mark.parametrize("bulk", [False, True], ids=["append", "append_many"])
def test_replayed_readings_are_admitted_beyond_max_assets(overflow: str, bulk: bool) -> None:
    # Found by a session-5 soak: an instance that took over the other's partitions while its
    # own places were full refused those partitions' assets during the replay. Refused, they
    # neither had windows rebuilt nor held the commit back (the partition had no tracked asset,
    # so the commit moved to the last offset read), and whoever resumed from that commit could
    # not score the next L - 1 windows of each: 16-20 readings of thousands of assets.
    store = WindowStore(length=4, n_features=1, interval_ms=I, max_assets=2, overflow=overflow)
    _live(store, "ab", range(0, 10))

    def add(asset: str, first_offset: int, *, replay: bool) -> AppendResult | None:
        ts = np.arange(6, 10, dtype=np.int64) * I
        offsets = np.arange(first_offset, first_offset + 4, dtype=np.int64)
        values = np.zeros((4, 1), dtype=np.float32)
        if bulk:
            return store.append_many([asset] * 4, ts, values, offsets, 1, replay=replay)
        return store.append(asset, ts, values, offsets, 1, replay=replay)

    result = add("c", 500, replay=True)
    assert result is not None
    assert result.accepted == 4
    assert len(store) == 3  # beyond the cap, nobody evicted
    assert sorted(store.min_needed_offsets()) == [0, 1]
    assert store.min_needed_offsets()[1] == 501  # c's last L - 1 readings hold the commit back

    # Live, a new asset beyond the cap is still refused (or evicts the idlest); append_many
    # declines, and the caller appends block by block to attribute that.
    live = add("d", 600, replay=False)
    if bulk:
        assert live is None
    elif overflow == "reject":
        assert live is not None
        assert live.asset_limit == 4
        assert "d" not in store
    else:
        assert live is not None
        assert live.accepted == 4
        assert "d" in store
        assert len(store) == 3
