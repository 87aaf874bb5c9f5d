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
With ``idle_timeout_ms`` set, an asset whose last reading is that much older (event time) than
the median of its partition's assets' last readings no longer holds the partition back: one
asset gone quiet (decommissioned, renamed, a one-off id) would otherwise pin the commit and make
every restart re-read everything since (found by the soak run). If such an asset resumes after a
restart without a gap in its own timestamps, its window starts over.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
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
        idle_timeout_ms: int | None = None,
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
            (
                idle_timeout_ms is None or idle_timeout_ms >= 0,
                f"idle_timeout_ms must be >= 0, got {idle_timeout_ms}",
            ),
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
        self.idle_timeout_ms = idle_timeout_ms
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

    def append_many(
        self,
        assets: Sequence[str],
        ts_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
    ) -> AppendResult | None:
        """Add readings of many assets from ``partition`` at once: reading ``i`` is ``assets[i]``'s.

        Equivalent to appending the readings one at a time in order (ready windows come in that
        order too), but vectorised across assets: per batch a fixed number of numpy calls and a
        little Python per asset, none per reading. Readings after a gap go through the block
        path of their asset. Returns ``None`` and changes nothing if a reading would be rejected
        (timestamp not after its asset's previous one, or a new asset beyond ``max_assets``): the
        caller then appends block by block to attribute the rejections.
        """
        n = len(assets)
        if ts_ms.shape != (n,) or offsets.shape != (n,) or values.shape != (n, self.n_features):
            raise ValueError(
                f"append_many: {n} assets, ts_ms {ts_ms.shape}, values {values.shape} and "
                f"offsets {offsets.shape}; expected [n], [n, {self.n_features}] and [n]"
            )
        if ts_ms.dtype != _I64 or offsets.dtype != _I64 or values.dtype != _F32:
            raise ValueError(
                f"append_many: ts_ms/offsets must be int64 and values float32, got "
                f"{ts_ms.dtype}/{offsets.dtype} and {values.dtype}"
            )
        if n == 0:
            return _NOTHING
        L, stride = self.length, self.stride
        index: dict[str, int] = {}
        codes = np.array([index.setdefault(a, len(index)) for a in assets], dtype=np.intp)
        names = list(index)
        n_groups = len(names)
        order = np.argsort(codes, kind="stable")  # grouped by asset, each in input order
        sizes = np.bincount(codes, minlength=n_groups)
        starts = np.zeros(n_groups, dtype=np.intp)
        np.cumsum(sizes[:-1], out=starts[1:])
        gcode = codes[order]
        ts_s = ts_ms[order]

        states = list(map(self._assets.get, names))
        new = [g for g, st in enumerate(states) if st is None]
        if new and len(self._assets) + len(new) > self.max_assets:
            return None  # some asset would be refused or evict another
        fresh_state = (0, 0, 0, stride)
        state = np.array(
            [
                fresh_state if st is None else (st.count, st.last_ts, st.head, st.phase)
                for st in states
            ],
            dtype=np.int64,
        ).reshape(n_groups, 4)
        count, last_ts, head, phase = state.T
        # Each reading's step from its predecessor (the asset's last reading for the first).
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = ts_s[:-1]
        prev[starts] = last_ts
        dt = ts_s - prev
        open_start = np.zeros(n, dtype=bool)  # a fresh asset's first reading has no step
        open_start[starts[count == 0]] = True
        if bool(((dt <= 0) & ~open_start).any()):
            return None  # duplicate or out of order: block by block names the message
        gap_group = np.zeros(n_groups, dtype=bool)
        gap_group[gcode[(dt > self._max_step) & ~open_start]] = True

        for g in new:
            states[g] = self._admit(names[g], partition)

        # -- groups without a gap, vectorised -------------------------------------------------
        # S holds per asset its ring's latest L-1 rows, then its new readings: the window that
        # ends at S row p is S[p - L + 1 : p + 1].
        vec = np.flatnonzero(~gap_group)
        j = np.arange(n) - starts[gcode]  # position within the asset's readings
        first = np.maximum(np.maximum(L - 1 - count, 0), stride - phase - 1)
        ready_s = (j >= first[gcode]) & ~gap_group[gcode]
        if stride > 1:
            ready_s &= (j - first[gcode]) % stride == 0
        pos_s = np.arange(n) + (gcode + 1) * (L - 1)
        rows = n + n_groups * (L - 1)
        seq = np.empty((rows, self.n_features), dtype=np.float32)
        seq_offs = np.empty(rows, dtype=np.int64)
        seq[pos_s] = values[order]
        seq_offs[pos_s] = offsets[order]
        slots = np.fromiter((st.slot for st in states), dtype=np.intp, count=n_groups)  # type: ignore[union-attr]
        tail = np.arange(1, L)
        size = self.slab_size
        slab_of = slots // size
        for s in np.unique(slab_of[vec]).tolist():
            gs = vec[slab_of[vec] == s]
            vals_slab, offs_slab = self._slabs[s]
            r = (slots[gs] % size)[:, None]
            at = head[gs][:, None] + tail
            dest = (gs * (L - 1) + starts[gs])[:, None] + np.arange(L - 1)
            seq[dest] = vals_slab[r, at]
            seq_offs[dest] = offs_slab[r, at % L]

        ready_in = np.empty(n, dtype=bool)
        ready_in[order] = ready_s
        pos_in = np.empty(n, dtype=np.intp)
        pos_in[order] = pos_s
        sel = np.flatnonzero(ready_in)  # input order
        n_ready = sel.shape[0]
        i0 = self._pn
        if n_ready:
            p = pos_in[sel]
            i = self._reserve(n_ready)
            np.take(seq, p[:, None] + np.arange(1 - L, 1), axis=0, out=self._pw[i : i + n_ready])
            self._pts[i : i + n_ready] = ts_ms[sel]
            self._ppart[i : i + n_ready] = partition
            self._poff[i : i + n_ready] = offsets[sel]
            self._pfirst[i : i + n_ready] = seq_offs[p + 1 - L]
            self._pnames.extend([assets[k] for k in sel.tolist()])

        # The last L readings of each asset go into its ring, twice.
        keep = ~gap_group[gcode] & (j >= (sizes - L)[gcode])
        at_ring = (head[gcode] + j) % L
        for s in np.unique(slab_of[gcode[keep]]).tolist():
            m = keep & (slab_of[gcode] == s)
            vals_slab, offs_slab = self._slabs[s]
            r = slots[gcode[m]] % size
            w = at_ring[m]
            v = seq[pos_s[m]]
            vals_slab[r, w] = v
            vals_slab[r, w + L] = v
            offs_slab[r, w] = seq_offs[pos_s[m]]
        ends = starts + sizes - 1
        new_phase = np.where(
            first <= sizes - 1,
            (sizes - 1 - first) % stride,
            np.minimum(phase + sizes, stride),
        )
        for st, h, c, ph, t in zip(
            [states[g] for g in vec.tolist()],
            ((head[vec] + sizes[vec]) % L).tolist(),
            np.minimum(count[vec] + sizes[vec], L).tolist(),
            new_phase[vec].tolist(),
            ts_s[ends[vec]].tolist(),
            strict=True,
        ):
            assert st is not None
            st.head, st.count, st.phase, st.last_ts, st.partition = h, c, ph, t, partition

        # -- groups with a gap: the block path, then windows back into input order ------------
        carried = resets = gap_ready = 0
        if gap_group.any():
            gap_keys = []
            for g in np.flatnonzero(gap_group).tolist():
                st = states[g]
                assert st is not None
                a, b = int(starts[g]), int(starts[g] + sizes[g])
                rows_in = order[a:b]
                before = self._pn
                got = self._append_block(
                    names[g], st, ts_s[a:b], values[rows_in], offsets[rows_in], partition
                )
                carried += got.carried
                resets += got.resets
                gap_ready += got.ready
                made = self._pts[before : self._pn]
                gap_keys.append(rows_in[np.searchsorted(ts_s[a:b], made)])
            if gap_ready:
                keys = np.concatenate([sel, *gap_keys])
                perm = np.argsort(keys, kind="stable")
                for arr in self._pending_arrays():
                    arr[i0 : self._pn] = arr[i0 : self._pn][perm]
                names_pending = self._pnames[i0:]
                self._pnames[i0:] = [names_pending[k] for k in perm.tolist()]
        if self._evict:
            # Least recently updated first: assets in order of their last reading.
            for g in np.argsort(order[ends], kind="stable").tolist():
                self._assets.move_to_end(names[g])
        return AppendResult(n, carried=carried, resets=resets, ready=n_ready + gap_ready)

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
        states = [st for st in self._assets.values() if st.count]
        if not states:
            return {}
        n = len(states)
        parts = np.fromiter((st.partition for st in states), np.int64, n)
        needed = np.fromiter(
            (st.offs[(st.head - min(st.count, keep)) % L] for st in states), np.int64, n
        )
        if self.idle_timeout_ms is not None:
            last = np.fromiter((st.last_ts for st in states), np.int64, n)
            live = np.ones(n, dtype=bool)
            for p in np.unique(parts).tolist():
                mine = parts == p
                # The median, not the newest: one asset with a clock far ahead moves nothing.
                clock = float(np.median(last[mine]))
                live[mine] = last[mine] >= clock - self.idle_timeout_ms
            parts, needed = parts[live], needed[live]
        order = np.lexsort((needed, parts))
        parts, needed = parts[order], needed[order]
        first = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1]])
        return dict(zip(parts[first].tolist(), needed[first].tolist(), strict=True))

    def min_needed_offset(self, partition: int) -> int | None:
        """Smallest offset among the last ``L - 1`` readings of the partition's assets.

        ``None`` when no asset of ``partition`` is tracked. Pending windows are not included.
        """
        return self.min_needed_offsets().get(partition)

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
