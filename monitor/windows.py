"""Per-asset sliding windows in preallocated numpy ring buffers.

The store is the pure core between decoded readings and scoring: it is synchronous, does no I/O
and is not thread-safe (call it from one thread at a time).

**Layout.** Assets live in slabs of ``slab_size`` rows, allocated lazily as assets appear, so
memory scales with the assets actually seen. Each asset row owns a ``[2L, F]`` float32 buffer in
which every reading is written twice, at ``pos`` and ``pos + L``: the latest ``L`` readings are
then always the one contiguous slice ``buf[head : head + L]`` (``head`` = next write position),
and ready windows are copied out of it without a gather. A parallel ``[L]`` int64 ring holds the
Kafka offset of each position. Per asset that is ``2·L·F·4 + 8·L`` bytes plus a small Python
record (≈ 8.7 KB at L=64, F=16).

**Gap policy.** The expected step between readings is ``interval_ms``. A step ``dt`` larger than
``(1 + gap_tolerance) × interval_ms`` is a gap of ``max(1, round(dt / interval_ms) - 1)`` missing
readings (rounded to the nearest step, halves up). Up to ``max_gap_steps`` missing readings are
filled by carrying the previous reading's values forward; these synthetic readings fill the
window but never make a window ready themselves, and carry the offset of the real reading they
copy. A longer gap resets the asset's run: it needs ``L`` new readings before it scores again,
and :class:`AppendResult` reports the reset (a data-quality event).

**Rejections.** Timestamps within one block must be strictly increasing (a :class:`ValueError`
otherwise), but a block may overlap data already seen: a reading whose timestamp equals the
asset's last one is a ``duplicate_timestamp``, an older one is ``out_of_order``. Both are dropped
and the rest of the block is kept, so the rejected readings are always a prefix of the block.

**Stride policy.** A window is ready when the asset's run holds at least ``L`` readings and the
*real* reading that just arrived is a scoring point: the first real reading that completes a
window scores, then every ``stride``-th real reading after the last one that scored. Every ready
window is copied into a pending batch at append time (so later appends cannot overwrite it) and
:meth:`WindowStore.collect` hands all of them over as one ``[B, L, F]`` array. Pending windows
cost ``L·F·4`` bytes each until collected, so collect after every poll.

**Overflow policy.** At most ``max_assets`` assets are tracked. With ``"reject"`` a new asset
beyond the cap is refused: its whole block is rejected as ``asset_limit`` for the caller to count
or dead-letter. With ``"evict_idle"`` the asset least recently updated (last accepted reading) is
dropped to make room; if it comes back its window starts over.

**Commits.** :meth:`WindowStore.min_needed_offset` is the smallest Kafka offset a restarted
consumer must re-read to rebuild every window on a partition: per asset, the offset of the
oldest of its last ``L - 1`` readings (offsets increase within a partition; an asset counts on
the partition of its last append). Windows already made ready (pending or collected and not
yet handled) are not included; their ``first_offsets`` are in the :class:`ReadyBatch`.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

Overflow = Literal["reject", "evict_idle"]
RejectReason = Literal["duplicate_timestamp", "out_of_order", "asset_limit"]

_F32: Final = np.dtype(np.float32)
_I64: Final = np.dtype(np.int64)
_MIN_PENDING: Final = 256


class AppendResult(NamedTuple):
    """What :meth:`WindowStore.append` did with one block of readings."""

    #: Real readings accepted into the asset's window.
    accepted: int
    #: Rejected readings by reason; rejected readings are always the first ones of the block.
    duplicate_timestamp: int = 0
    out_of_order: int = 0
    asset_limit: int = 0
    #: Synthetic readings carried forward over short gaps.
    carried: int = 0
    #: Long gaps that reset the window (data-quality events).
    resets: int = 0
    #: Windows this block made ready for the next :meth:`WindowStore.collect`.
    ready: int = 0

    @property
    def rejected(self) -> int:
        return self.duplicate_timestamp + self.out_of_order + self.asset_limit

    @property
    def reset(self) -> bool:
        return self.resets > 0

    def reasons(self) -> dict[RejectReason, int]:
        """Rejected readings by reason, leaving out reasons with none."""
        counts: dict[RejectReason, int] = {
            "duplicate_timestamp": self.duplicate_timestamp,
            "out_of_order": self.out_of_order,
            "asset_limit": self.asset_limit,
        }
        return {reason: n for reason, n in counts.items() if n}


_NOTHING: Final = AppendResult(0)
_ONE: Final = AppendResult(1)
_ONE_READY: Final = AppendResult(1, ready=1)


@dataclass(frozen=True, eq=False)
class ReadyBatch:
    """Windows that became ready since the last collect, in the order they became ready."""

    windows: npt.NDArray[np.float32]  # [B, L, F], C-contiguous
    assets: list[str]  # [B]
    ts_ms: npt.NDArray[np.int64]  # [B] timestamp of each window's last reading
    partitions: npt.NDArray[np.int32]  # [B]
    offsets: npt.NDArray[np.int64]  # [B] offset of each window's last reading
    #: [B] offset of each window's first reading (for a carried-forward reading, the offset of
    #: the real reading it copies): what a restart must re-read to rebuild the window.
    first_offsets: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.assets)


class WindowStoreStats(NamedTuple):
    """Gauges and cumulative counters for metrics (counters survive :meth:`WindowStore.reset`)."""

    assets: int
    slabs: int
    nbytes: int
    pending: int
    pending_nbytes: int
    evictions: int
    rejected_asset_limit: int
    rejected_duplicate_timestamp: int
    rejected_out_of_order: int
    carried: int
    resets: int


class _Asset:
    """One tracked asset: views into its slab row and its run state (no per-reading objects)."""

    __slots__ = ("count", "head", "last_ts", "offs", "partition", "phase", "slot", "vals")

    def __init__(
        self,
        slot: int,
        vals: npt.NDArray[np.float32],
        offs: npt.NDArray[np.int64],
        partition: int,
        stride: int,
    ) -> None:
        self.slot = slot
        self.vals = vals  # [2L, F] view into the slab
        self.offs = offs  # [L] view into the slab
        self.partition = partition
        self.head = 0  # ring position the next reading goes to
        self.count = 0  # readings in the current run, capped at L
        self.last_ts = 0  # meaningless while count == 0
        # Real readings since the last scoring point, saturated at stride: a fresh run may score
        # as soon as its window is full.
        self.phase = stride


class WindowStore:
    """Sliding windows of ``length`` readings × ``n_features`` for many assets."""

    def __init__(
        self,
        *,
        length: int,
        n_features: int,
        interval_ms: int,
        max_gap_steps: int = 3,
        stride: int = 1,
        max_assets: int = 100_000,
        overflow: Overflow = "reject",
        gap_tolerance: float = 0.5,
        slab_size: int = 1024,
    ) -> None:
        checks = (
            (length >= 2, f"length must be >= 2, got {length}"),
            (n_features >= 1, f"n_features must be >= 1, got {n_features}"),
            (interval_ms >= 1, f"interval_ms must be >= 1, got {interval_ms}"),
            (max_gap_steps >= 0, f"max_gap_steps must be >= 0, got {max_gap_steps}"),
            (stride >= 1, f"stride must be >= 1, got {stride}"),
            (max_assets >= 1, f"max_assets must be >= 1, got {max_assets}"),
            (overflow in ("reject", "evict_idle"), f"unknown overflow policy {overflow!r}"),
            (
                math.isfinite(gap_tolerance) and gap_tolerance >= 0,
                f"gap_tolerance must be >= 0, got {gap_tolerance}",
            ),
            (slab_size >= 1, f"slab_size must be >= 1, got {slab_size}"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.length = length
        self.n_features = n_features
        self.interval_ms = interval_ms
        self.max_gap_steps = max_gap_steps
        self.stride = stride
        self.max_assets = max_assets
        self.overflow: Overflow = overflow
        self.gap_tolerance = gap_tolerance
        self.slab_size = slab_size
        # Integer form of the gap test: for integer dt, dt > (1 + tol)·interval <=> dt > this.
        self._max_step = math.floor((1.0 + gap_tolerance) * interval_ms)
        self._evict = overflow == "evict_idle"
        self._tail = np.arange(1, length, dtype=np.intp)

        self._assets: OrderedDict[str, _Asset] = OrderedDict()
        self._slabs: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        self._free: list[int] = []

        self._evictions = 0
        self._rejected_limit = 0
        self._rejected_dup = 0
        self._rejected_ooo = 0
        self._carried = 0
        self._resets = 0

        self._pn = 0
        self._pnames: list[str] = []
        self._alloc_pending(_MIN_PENDING)

    # -- state and metrics -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._assets)

    def __contains__(self, asset: object) -> bool:
        return asset in self._assets

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring-buffer slabs (grows one slab at a time)."""
        return sum(v.nbytes + o.nbytes for v, o in self._slabs)

    @property
    def pending(self) -> int:
        """Windows waiting for :meth:`collect`."""
        return self._pn

    def stats(self) -> WindowStoreStats:
        pending_nbytes = sum(a.nbytes for a in self._pending_arrays())
        return WindowStoreStats(
            assets=len(self._assets),
            slabs=len(self._slabs),
            nbytes=self.nbytes,
            pending=self._pn,
            pending_nbytes=pending_nbytes,
            evictions=self._evictions,
            rejected_asset_limit=self._rejected_limit,
            rejected_duplicate_timestamp=self._rejected_dup,
            rejected_out_of_order=self._rejected_ooo,
            carried=self._carried,
            resets=self._resets,
        )

    # -- appending ---------------------------------------------------------------------------

    def append(
        self,
        asset: str,
        ts_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
    ) -> AppendResult:
        """Add a block of one asset's readings (``ts_ms`` strictly increasing) from ``partition``.

        ``values`` is ``[n, n_features]`` float32, ``ts_ms`` and ``offsets`` are ``[n]`` int64.
        """
        n = ts_ms.shape[0] if ts_ms.ndim == 1 else -1
        if n < 0 or offsets.shape != ts_ms.shape or values.shape != (n, self.n_features):
            raise ValueError(
                f"append({asset!r}): ts_ms {ts_ms.shape}, values {values.shape} and offsets "
                f"{offsets.shape} must be [n], [n, {self.n_features}] and [n]"
            )
        if (
            (ts_ms.dtype is not _I64 and ts_ms.dtype != _I64)
            or (offsets.dtype is not _I64 and offsets.dtype != _I64)
            or (values.dtype is not _F32 and values.dtype != _F32)
        ):
            raise ValueError(
                f"append({asset!r}): ts_ms/offsets must be int64 and values float32, got "
                f"{ts_ms.dtype}/{offsets.dtype} and {values.dtype}"
            )
        if n > 1 and not bool((ts_ms[1:] > ts_ms[:-1]).all()):
            raise ValueError(f"append({asset!r}): timestamps within a block must increase")
        if n == 0:
            return _NOTHING

        st = self._assets.get(asset)
        if st is None:
            st = self._admit(asset, partition)
            if st is None:
                self._rejected_limit += n
                return AppendResult(0, asset_limit=n)
        elif n == 1:
            # Fast path for the common single reading one normal step after the last one.
            t = int(ts_ms[0])
            if st.count and 0 < t - st.last_ts <= self._max_step:
                return self._append_one(asset, st, t, values[0], int(offsets[0]), partition)
        return self._append_block(asset, st, ts_ms, values, offsets, partition)

    def _append_one(
        self,
        asset: str,
        st: _Asset,
        t: int,
        value: npt.NDArray[np.float32],
        offset: int,
        partition: int,
    ) -> AppendResult:
        L = self.length
        h = st.head
        vals = st.vals
        vals[h] = value
        vals[h + L] = value
        st.offs[h] = offset
        h += 1
        if h == L:
            h = 0
        st.head = h
        st.last_ts = t
        st.partition = partition
        if self._evict:
            self._assets.move_to_end(asset)
        count = st.count
        if count < L:
            count += 1
            st.count = count
        phase = st.phase + 1
        if count < L or phase < self.stride:
            st.phase = min(phase, self.stride)
            return _ONE
        st.phase = 0
        i = self._reserve(1)
        self._pw[i] = vals[h : h + L]
        self._pts[i] = t
        self._ppart[i] = partition
        self._poff[i] = offset
        self._pfirst[i] = st.offs[h]  # after the advance, head is the window's oldest reading
        self._pnames.append(asset)
        return _ONE_READY

    def _append_block(
        self,
        asset: str,
        st: _Asset,
        ts: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
    ) -> AppendResult:
        st.partition = partition
        fresh = st.count == 0
        dup = ooo = 0
        if not fresh:
            # The block is strictly increasing, so the rejected readings are a prefix.
            k = int(np.searchsorted(ts, st.last_ts, side="right"))
            if k:
                dup = int(ts[k - 1] == st.last_ts)
                ooo = k - dup
                self._rejected_dup += dup
                self._rejected_ooo += ooo
                if k == ts.shape[0]:
                    return AppendResult(0, duplicate_timestamp=dup, out_of_order=ooo)
                ts, values, offsets = ts[k:], values[k:], offsets[k:]
        m = ts.shape[0]

        # A fresh asset's first reading starts its run: no gap before it.
        dt = np.diff(ts, prepend=ts[:1] if fresh else np.int64(st.last_ts))
        gap = dt > self._max_step
        synth: npt.NDArray[np.int64] | None = None
        resets: list[int] = []
        carried = 0
        if bool(gap.any()):
            interval = self.interval_ms
            missing = np.where(gap, np.maximum((dt + interval // 2) // interval - 1, 1), 0)
            too_long = missing > self.max_gap_steps
            synth = np.where(too_long, 0, missing)
            carried = int(synth.sum())
            resets = np.flatnonzero(too_long).tolist()
            self._carried += carried
            self._resets += len(resets)

        # Each long gap starts a new run; segments between them are handled vectorised.
        restart_first = fresh or (bool(resets) and resets[0] == 0)
        bounds = [0, *(r for r in resets if r), m]
        ready = 0
        for a, b in itertools.pairwise(bounds):
            if a or restart_first:
                st.count = 0
                st.phase = self.stride
            seg_synth = None if synth is None else synth[a:b]
            ready += self._extend(
                asset, st, ts[a:b], values[a:b], offsets[a:b], seg_synth, partition
            )
        if self._evict:
            self._assets.move_to_end(asset)
        return AppendResult(
            m,
            duplicate_timestamp=dup,
            out_of_order=ooo,
            carried=carried,
            resets=len(resets),
            ready=ready,
        )

    def _extend(
        self,
        asset: str,
        st: _Asset,
        ts: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        synth: npt.NDArray[np.int64] | None,
        partition: int,
    ) -> int:
        """Append one run segment of ``m`` real readings (plus carried ones); return windows."""
        L = self.length
        stride = self.stride
        m = ts.shape[0]
        h = st.head
        real_pos: npt.NDArray[np.int64] | None = None  # entry index of each real reading
        if synth is not None and bool(synth.any()):
            # Expand: reading j is preceded by synth[j] copies of its predecessor (row 0 of the
            # extended arrays is the asset's latest reading).
            counts = np.empty(2 * m, dtype=np.int64)
            counts[0::2] = synth
            counts[1::2] = 1
            pairs = np.empty(2 * m, dtype=np.intp)
            pairs[0::2] = np.arange(m)
            pairs[1::2] = np.arange(1, m + 1)
            src = np.repeat(pairs, counts)
            prev = h - 1 if h else L - 1
            values = np.concatenate((st.vals[h + L - 1 : h + L], values))[src]
            offsets = np.concatenate((st.offs[prev : prev + 1], offsets))[src]
            real_pos = np.cumsum(synth + 1) - 1
        n_entries = values.shape[0]

        # Real reading j completes a window once count + entry + 1 >= L; scoring points are the
        # first such reading allowed by the phase, then every stride-th one.
        need = L - 1 - st.count
        k0 = max(need, 0) if real_pos is None else int(np.searchsorted(real_pos, need))
        first = max(k0, stride - st.phase - 1)
        ready = 0
        if first < m:
            js = np.arange(first, m, stride)
            ready = js.shape[0]
            st.phase = m - 1 - int(js[-1])
            ends = js if real_pos is None else real_pos[js]
            # seq[e : e + L] is the window ending at entry e; for a fresh run the ring part is
            # stale but never read, since windows there need e >= L - 1.
            seq = np.concatenate((st.vals[h + 1 : h + L], values))
            seq_offs = np.concatenate((st.offs[(h + self._tail) % L], offsets))
            view = np.lib.stride_tricks.sliding_window_view(seq, L, axis=0).transpose(0, 2, 1)
            i = self._reserve(ready)
            np.take(view, ends, axis=0, out=self._pw[i : i + ready], mode="clip")
            self._pts[i : i + ready] = ts[js]
            self._ppart[i : i + ready] = partition
            self._poff[i : i + ready] = offsets[ends]
            self._pfirst[i : i + ready] = seq_offs[ends]
            self._pnames.extend([asset] * ready)
        else:
            st.phase = min(st.phase + m, stride)

        # Only the last L entries survive in the ring.
        w = min(n_entries, L)
        pos = (h + np.arange(n_entries - w, n_entries)) % L
        tail = values[n_entries - w :]
        st.vals[pos] = tail
        st.vals[pos + L] = tail
        st.offs[pos] = offsets[n_entries - w :]
        st.head = (h + n_entries) % L
        st.count = min(st.count + n_entries, L)
        st.last_ts = int(ts[-1])
        return ready

    # -- asset slots -------------------------------------------------------------------------

    def _admit(self, asset: str, partition: int) -> _Asset | None:
        if len(self._assets) >= self.max_assets:
            if not self._evict:
                return None
            _, idle = self._assets.popitem(last=False)
            self._free.append(idle.slot)
            self._evictions += 1
        if not self._free:
            size = self.slab_size
            vals = np.zeros((size, 2 * self.length, self.n_features), dtype=np.float32)
            offs = np.zeros((size, self.length), dtype=np.int64)
            base = len(self._slabs) * size
            self._slabs.append((vals, offs))
            # Reversed so that pop() hands out the lowest slot first.
            self._free.extend(range(base + size - 1, base - 1, -1))
        slot = self._free.pop()
        vals, offs = self._slabs[slot // self.slab_size]
        row = slot % self.slab_size
        st = _Asset(slot, vals[row], offs[row], partition, self.stride)
        self._assets[asset] = st
        return st

    # -- pending windows ---------------------------------------------------------------------

    def _alloc_pending(self, capacity: int) -> None:
        self._pcap = capacity
        self._pw = np.empty((capacity, self.length, self.n_features), dtype=np.float32)
        self._pts = np.empty(capacity, dtype=np.int64)
        self._ppart = np.empty(capacity, dtype=np.int32)
        self._poff = np.empty(capacity, dtype=np.int64)
        self._pfirst = np.empty(capacity, dtype=np.int64)

    def _pending_arrays(self) -> tuple[npt.NDArray[np.generic], ...]:
        return (self._pw, self._pts, self._ppart, self._poff, self._pfirst)

    def _reserve(self, k: int) -> int:
        """Make room for ``k`` more pending windows; return the index of the first."""
        i = self._pn
        if i + k > self._pcap:
            old = self._pending_arrays()
            self._alloc_pending(max(2 * self._pcap, i + k))
            for src, dst in zip(old, self._pending_arrays(), strict=True):
                dst[:i] = src[:i]
        self._pn = i + k
        return i

    def collect(self) -> ReadyBatch:
        """Hand over every window made ready since the last collect, as one batch."""
        n = self._pn
        batch = ReadyBatch(
            windows=self._pw[:n],
            assets=self._pnames,
            ts_ms=self._pts[:n],
            partitions=self._ppart[:n],
            offsets=self._poff[:n],
            first_offsets=self._pfirst[:n],
        )
        # Fresh buffers, so the batch stays valid while the caller scores it.
        self._pn = 0
        self._pnames = []
        self._alloc_pending(max(_MIN_PENDING, n))
        return batch

    # -- commits, rebalances, resets ---------------------------------------------------------

    def min_needed_offsets(self) -> dict[int, int]:
        """:meth:`min_needed_offset` of every partition that has assets, in one pass."""
        L = self.length
        keep = L - 1
        needed: dict[int, int] = {}
        for st in self._assets.values():
            offset = int(st.offs[(st.head - min(st.count, keep)) % L])
            p = st.partition
            if offset < needed.get(p, offset + 1):
                needed[p] = offset
        return needed

    def min_needed_offset(self, partition: int) -> int | None:
        """Smallest offset among the last ``L - 1`` readings of the partition's assets.

        ``None`` when no asset of ``partition`` is tracked. Pending windows are not included.
        """
        L = self.length
        keep = L - 1
        best: int | None = None
        for st in self._assets.values():
            if st.partition == partition:
                offset = int(st.offs[(st.head - min(st.count, keep)) % L])
                if best is None or offset < best:
                    best = offset
        return best

    def forget_partition(self, partition: int) -> int:
        """Drop the assets whose last append came from ``partition`` and its pending windows.

        Call :meth:`collect` first to keep the pending windows. Returns the assets dropped.
        """
        gone = [name for name, st in self._assets.items() if st.partition == partition]
        for name in gone:
            self._free.append(self._assets.pop(name).slot)
        n = self._pn
        if n:
            keep = np.flatnonzero(self._ppart[:n] != partition)
            k = keep.shape[0]
            if k < n:
                for arr in self._pending_arrays():
                    arr[:k] = arr[keep]
                self._pnames = [self._pnames[j] for j in keep.tolist()]
                self._pn = k
        return len(gone)

    def reset(self) -> None:
        """Drop every asset, slab and pending window (cumulative counters are kept)."""
        self._assets.clear()
        self._slabs.clear()
        self._free.clear()
        self._pn = 0
        self._pnames = []
        self._alloc_pending(_MIN_PENDING)
