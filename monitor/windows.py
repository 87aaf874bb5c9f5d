"""Per-asset sliding windows in preallocated numpy ring buffers.

The store is the pure core between decoded readings and scoring: it is synchronous, does no I/O
and is not thread-safe (call it from one thread at a time).

**Layout.** Assets live in slabs of ``slab_size`` rows, allocated lazily as assets appear, so
memory scales with the assets actually seen. Each asset row owns a ``[2L, F]`` float32 buffer in
which every reading is written twice, at ``pos`` and ``pos + L``: the latest ``L`` readings are
then always the one contiguous slice ``buf[head : head + L]`` (``head`` = next write position),
and ready windows are copied out of it without a gather. A parallel ``[L]`` int64 ring holds the
Kafka offset of each position. The run state of every asset (count, head, last timestamp, phase,
partition) lives in numpy arrays indexed by slot, so batch appends, commits and expiry are
vectorised across assets and no Python object exists per asset beyond its name. Per asset that
is ``2·L·F·4 + 8·L`` bytes plus about 50 bytes of state (≈ 8.7 KB at L=64, F=16).

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
dropped to make room; if it comes back its window starts over. Replayed readings (``replay``)
are admitted beyond the cap: an instance that takes over another's partitions must rebuild the
windows of the assets that instance admitted (found by a soak: refused during the replay, they
let the commit move past readings their windows needed).

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

**Expiry.** :meth:`WindowStore.expire_idle`, called periodically, drops assets that were not
appended to since the previous call and are idle by the rule above (and by more than a gap that
resets a window anyway): their memory and slot are freed, so one-off or decommissioned asset ids
neither accumulate nor hold ``max_assets`` places for ever (found by the second soak run: a
flood of one-off ids stayed tracked, and every batch paid for them).
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from monitor import native

Overflow = Literal["reject", "evict_idle"]
RejectReason = Literal["duplicate_timestamp", "out_of_order", "asset_limit"]

_F32: Final = np.dtype(np.float32)
_I64: Final = np.dtype(np.int64)
_MIN_PENDING: Final = 256
#: The per-slot state arrays of WindowStore (grown a slab at a time, cleared by reset).
_STATE_ARRAYS: Final = ("_count", "_head", "_last_ts", "_phase", "_part", "_used", "_seen")


class _Declined(enum.Enum):
    #: The native append met an asset not tracked yet (the numpy path admits it).
    UNKNOWN_ASSET = "unknown asset"


def _gather(
    seq: npt.NDArray[np.float32], starts: npt.NDArray[np.intp], out: npt.NDArray[np.float32]
) -> None:
    """``out[k] = seq[starts[k] : starts[k] + L]`` for ``out`` of shape ``[n, L, F]``.

    Each window is one contiguous run of ``L·F`` values in ``seq``'s memory, so it is copied
    as one block through a strided view (no copy of ``seq``): about twice as fast as indexing
    ``seq`` row by row, and ``np.take`` on a view would first copy every window of it.
    """
    n, length, n_features = out.shape
    if n == 0:
        return
    seq = np.ascontiguousarray(seq)
    if native.speedups is not None and out.flags.c_contiguous:
        # One memcpy per window, no temporary (the fancy index below builds one).
        native.speedups.gather_windows(seq, starts.astype(np.intp, copy=False), length, out)
        return
    itemsize = seq.itemsize
    windows = np.lib.stride_tricks.as_strided(
        seq.reshape(-1),
        shape=(seq.shape[0] - length + 1, length * n_features),
        strides=(n_features * itemsize, itemsize),
        writeable=False,
    )
    out.reshape(n, length * n_features)[...] = windows[starts]


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
    expired: int
    rejected_asset_limit: int
    rejected_duplicate_timestamp: int
    rejected_out_of_order: int
    carried: int
    resets: int


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

        # Asset name -> slot (least recently updated first when evicting); per slot, its run
        # state in arrays that grow one slab at a time (no Python object per asset).
        self._assets: OrderedDict[str, int] = OrderedDict()
        self._slabs: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
        self._free: list[int] = []
        self._names: list[str | None] = []
        self._count = np.zeros(0, dtype=np.int64)  # readings in the current run, capped at L
        self._head = np.zeros(0, dtype=np.int64)  # ring position the next reading goes to
        self._last_ts = np.zeros(0, dtype=np.int64)  # meaningless while count == 0
        # Real readings since the last scoring point, saturated at stride: a fresh run may
        # score as soon as its window is full.
        self._phase = np.zeros(0, dtype=np.int64)
        self._part = np.zeros(0, dtype=np.int64)  # partition of the last append
        self._used = np.zeros(0, dtype=bool)
        # Idle expiry: the epoch of each slot's last append (see expire_idle).
        self._seen = np.zeros(0, dtype=np.int64)
        self._epoch = 0
        #: What the append in progress marks in ``_seen``: the epoch, or one that counts as
        #: not heard from (replayed readings).
        self._seen_mark = 0
        self._expired = 0

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
            expired=self._expired,
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
        *,
        replay: bool = False,
    ) -> AppendResult:
        """Add a block of one asset's readings (``ts_ms`` strictly increasing) from ``partition``.

        ``values`` is ``[n, n_features]`` float32, ``ts_ms`` and ``offsets`` are ``[n]`` int64.
        ``replay``: readings read again after a restore from a commit. They rebuild windows but
        are history, not news: they do not count as the asset having reported for
        :meth:`expire_idle` (else every rebalance, replaying from a commit that silent assets
        hold back, would keep them alive and the commit pinned for good). Nor do they count
        against ``max_assets``: the previous owner admitted these assets, and a refused one
        would neither have its windows rebuilt nor hold the commit back, so whoever resumes
        from the next commit could never score the windows that needed its readings.
        """
        self._seen_mark = self._epoch - 2 if replay else self._epoch
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

        slot = self._assets.get(asset)
        if slot is None:
            slot = self._admit(asset, partition, replay=replay)
            if slot is None:
                self._rejected_limit += n
                return AppendResult(0, asset_limit=n)
        elif n == 1:
            # Fast path for the common single reading one normal step after the last one.
            t = int(ts_ms[0])
            if self._count[slot] and 0 < t - int(self._last_ts[slot]) <= self._max_step:
                return self._append_one(asset, slot, t, values[0], int(offsets[0]), partition)
        return self._append_block(asset, slot, ts_ms, values, offsets, partition)

    def append_many(
        self,
        assets: Sequence[str],
        ts_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
        *,
        replay: bool = False,
    ) -> AppendResult | None:
        """Add readings of many assets from ``partition`` at once: reading ``i`` is ``assets[i]``'s.

        Equivalent to appending the readings one at a time in order (ready windows come in that
        order too), with no Python per reading: with the C extension one native pass (each
        reading into its ring, each window it completes copied out once), else vectorised across
        assets (a fixed number of numpy calls per batch, one dictionary lookup per asset). A
        batch with a new asset takes the numpy path, which admits it. Readings of an asset with
        a gap in the batch go through that asset's block path. Returns ``None`` and changes
        nothing if a reading would be rejected (timestamp not after its asset's previous one,
        or a new asset beyond ``max_assets``): the caller then appends block by block to
        attribute the rejections. ``replay`` as for :meth:`append`.
        """
        self._seen_mark = self._epoch - 2 if replay else self._epoch
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
        if native.speedups is not None and self._slabs:
            got = self._append_many_native(
                native.speedups, assets, ts_ms, values, offsets, partition
            )
            if not isinstance(got, _Declined):
                return got
        L, stride = self.length, self.stride
        index: dict[str, int] = {}
        codes = np.fromiter(
            (index.setdefault(a, len(index)) for a in assets), dtype=np.intp, count=n
        )
        names = list(index)
        n_groups = len(names)
        order = np.argsort(codes, kind="stable")  # grouped by asset, each in input order
        sizes = np.bincount(codes, minlength=n_groups)
        starts = np.zeros(n_groups, dtype=np.intp)
        np.cumsum(sizes[:-1], out=starts[1:])
        gcode = codes[order]
        ts_s = ts_ms[order]

        get = self._assets.get
        slots = np.fromiter((get(a, -1) for a in names), dtype=np.intp, count=n_groups)
        known = slots >= 0
        new = np.flatnonzero(~known).tolist()
        if new and not replay and len(self._assets) + len(new) > self.max_assets:
            return None  # some asset would be refused or evict another
        count = np.zeros(n_groups, dtype=np.int64)
        last_ts = np.zeros(n_groups, dtype=np.int64)
        head = np.zeros(n_groups, dtype=np.int64)
        phase = np.full(n_groups, stride, dtype=np.int64)
        ks = slots[known]
        count[known] = self._count[ks]
        last_ts[known] = self._last_ts[ks]
        head[known] = self._head[ks]
        phase[known] = self._phase[ks]
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
            slot = self._admit(names[g], partition, replay=replay)
            assert slot is not None
            slots[g] = slot

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
            _gather(seq, p - (L - 1), self._pw[i : i + n_ready])
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
        vs = slots[vec]
        self._head[vs] = (head[vec] + sizes[vec]) % L
        self._count[vs] = np.minimum(count[vec] + sizes[vec], L)
        self._phase[vs] = new_phase[vec]
        self._last_ts[vs] = ts_s[ends[vec]]
        self._part[vs] = partition
        self._seen[vs] = self._seen_mark

        # -- groups with a gap: the block path, then windows back into input order ------------
        gaps = [
            (names[g], int(slots[g]), order[int(starts[g]) : int(starts[g] + sizes[g])])
            for g in np.flatnonzero(gap_group).tolist()
        ]
        carried, resets, gap_ready = self._append_gaps(
            gaps, sel, i0, ts_ms, values, offsets, partition
        )
        if self._evict:
            # Least recently updated first: assets in order of their last reading.
            for g in np.argsort(order[ends], kind="stable").tolist():
                self._assets.move_to_end(names[g])
        return AppendResult(n, carried=carried, resets=resets, ready=n_ready + gap_ready)

    def _append_many_native(
        self,
        fast: native.Speedups,
        assets: Sequence[str],
        ts_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
    ) -> AppendResult | _Declined | None:
        """:meth:`append_many` in one native pass over the readings (each into its ring, each
        ready window copied out once); ``UNKNOWN_ASSET`` when a new asset needs admitting,
        which the numpy path does (rare: once per asset)."""
        n = len(assets)
        names = assets if type(assets) is list else list(assets)
        i0 = self._pn
        ready = np.empty(n, dtype=np.intp)
        slots = np.empty(n, dtype=np.intp)
        gap = np.empty(n, dtype=bool)
        args = (
            names,
            self._assets,
            np.ascontiguousarray(ts_ms),
            np.ascontiguousarray(values),
            np.ascontiguousarray(offsets),
            self._slabs,
            (self._count, self._head, self._last_ts, self._phase, self._part, self._seen),
        )
        flags = (ready, slots, gap, self.stride, self._max_step, partition, self._seen_mark)
        pending = tuple(a[i0:] for a in self._pending_arrays())
        got = fast.append_readings(*args, pending, *flags, self._pnames)
        if got == -2:  # valid, but pending needs room for a window per reading
            self._make_room(n)
            pending = tuple(a[i0:] for a in self._pending_arrays())
            got = fast.append_readings(*args, pending, *flags, self._pnames)
        if got is None:
            return _Declined.UNKNOWN_ASSET
        if not isinstance(got, tuple):
            return None  # duplicate or out of order: block by block names the message
        made, n_gap = got
        self._pn = i0 + made
        sel = ready[:made]
        carried = resets = gap_ready = 0
        if n_gap:
            rows = np.flatnonzero(gap)
            gap_slots = slots[rows]
            gaps = [
                (self._names[s], s, rows[gap_slots == s]) for s in dict.fromkeys(gap_slots.tolist())
            ]
            carried, resets, gap_ready = self._append_gaps(
                gaps, sel, i0, ts_ms, values, offsets, partition
            )
        if self._evict:
            # Least recently updated first: assets in order of their last reading.
            for a in reversed(dict.fromkeys(reversed(names))):
                self._assets.move_to_end(a)
        return AppendResult(n, carried=carried, resets=resets, ready=made + gap_ready)

    def _append_gaps(
        self,
        gaps: Sequence[tuple[str | None, int, npt.NDArray[np.intp]]],
        sel: npt.NDArray[np.intp],
        i0: int,
        ts_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
    ) -> tuple[int, int, int]:
        """Append the readings of the assets with a gap (``(name, slot, input rows)`` each)
        through the block path, after the other readings made the windows of input rows
        ``sel`` (pending from ``i0``); then put all the windows back into input order. Returns
        readings carried forward, resets and windows made."""
        carried = resets = gap_ready = 0
        gap_keys = []
        for name, slot, rows_in in gaps:
            assert name is not None
            before = self._pn
            ts = ts_ms[rows_in]
            got = self._append_block(name, slot, ts, values[rows_in], offsets[rows_in], partition)
            carried += got.carried
            resets += got.resets
            gap_ready += got.ready
            made = self._pts[before : self._pn]
            gap_keys.append(rows_in[np.searchsorted(ts, made)])
        if gap_ready:
            keys = np.concatenate([sel, *gap_keys])
            perm = np.argsort(keys, kind="stable")
            for arr in self._pending_arrays():
                arr[i0 : self._pn] = arr[i0 : self._pn][perm]
            names_pending = self._pnames[i0:]
            self._pnames[i0:] = [names_pending[k] for k in perm.tolist()]
        return carried, resets, gap_ready

    def _rows(self, slot: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """An asset's ``[2L, F]`` value rows and ``[L]`` offset ring (views into its slab)."""
        vals, offs = self._slabs[slot // self.slab_size]
        r = slot % self.slab_size
        return vals[r], offs[r]

    def _append_one(
        self,
        asset: str,
        slot: int,
        t: int,
        value: npt.NDArray[np.float32],
        offset: int,
        partition: int,
    ) -> AppendResult:
        L = self.length
        vals, offs = self._rows(slot)
        h = int(self._head[slot])
        vals[h] = value
        vals[h + L] = value
        offs[h] = offset
        h += 1
        if h == L:
            h = 0
        self._head[slot] = h
        self._last_ts[slot] = t
        self._part[slot] = partition
        self._seen[slot] = self._seen_mark
        if self._evict:
            self._assets.move_to_end(asset)
        count = int(self._count[slot])
        if count < L:
            count += 1
            self._count[slot] = count
        phase = int(self._phase[slot]) + 1
        if count < L or phase < self.stride:
            self._phase[slot] = min(phase, self.stride)
            return _ONE
        self._phase[slot] = 0
        i = self._reserve(1)
        self._pw[i] = vals[h : h + L]
        self._pts[i] = t
        self._ppart[i] = partition
        self._poff[i] = offset
        self._pfirst[i] = offs[h]  # after the advance, head is the window's oldest reading
        self._pnames.append(asset)
        return _ONE_READY

    def _append_block(
        self,
        asset: str,
        slot: int,
        ts: npt.NDArray[np.int64],
        values: npt.NDArray[np.float32],
        offsets: npt.NDArray[np.int64],
        partition: int,
    ) -> AppendResult:
        self._part[slot] = partition
        self._seen[slot] = self._seen_mark
        fresh = self._count[slot] == 0
        dup = ooo = 0
        if not fresh:
            # The block is strictly increasing, so the rejected readings are a prefix.
            last_ts = int(self._last_ts[slot])
            k = int(np.searchsorted(ts, last_ts, side="right"))
            if k:
                dup = int(ts[k - 1] == last_ts)
                ooo = k - dup
                self._rejected_dup += dup
                self._rejected_ooo += ooo
                if k == ts.shape[0]:
                    return AppendResult(0, duplicate_timestamp=dup, out_of_order=ooo)
                ts, values, offsets = ts[k:], values[k:], offsets[k:]
        m = ts.shape[0]

        # A fresh asset's first reading starts its run: no gap before it.
        dt = np.diff(ts, prepend=ts[:1] if fresh else self._last_ts[slot])
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
                self._count[slot] = 0
                self._phase[slot] = self.stride
            seg_synth = None if synth is None else synth[a:b]
            ready += self._extend(
                asset, slot, ts[a:b], values[a:b], offsets[a:b], seg_synth, partition
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
        slot: int,
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
        vals, offs = self._rows(slot)
        h = int(self._head[slot])
        count = int(self._count[slot])
        phase = int(self._phase[slot])
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
            values = np.concatenate((vals[h + L - 1 : h + L], values))[src]
            offsets = np.concatenate((offs[prev : prev + 1], offsets))[src]
            real_pos = np.cumsum(synth + 1) - 1
        n_entries = values.shape[0]

        # Real reading j completes a window once count + entry + 1 >= L; scoring points are the
        # first such reading allowed by the phase, then every stride-th one.
        need = L - 1 - count
        k0 = max(need, 0) if real_pos is None else int(np.searchsorted(real_pos, need))
        first = max(k0, stride - phase - 1)
        ready = 0
        if first < m:
            js = np.arange(first, m, stride)
            ready = js.shape[0]
            self._phase[slot] = m - 1 - int(js[-1])
            ends = js if real_pos is None else real_pos[js]
            # seq[e : e + L] is the window ending at entry e; for a fresh run the ring part is
            # stale but never read, since windows there need e >= L - 1.
            seq = np.concatenate((vals[h + 1 : h + L], values))
            seq_offs = np.concatenate((offs[(h + self._tail) % L], offsets))
            i = self._reserve(ready)
            _gather(seq, ends, self._pw[i : i + ready])
            self._pts[i : i + ready] = ts[js]
            self._ppart[i : i + ready] = partition
            self._poff[i : i + ready] = offsets[ends]
            self._pfirst[i : i + ready] = seq_offs[ends]
            self._pnames.extend([asset] * ready)
        else:
            self._phase[slot] = min(phase + m, stride)

        # Only the last L entries survive in the ring.
        w = min(n_entries, L)
        pos = (h + np.arange(n_entries - w, n_entries)) % L
        tail = values[n_entries - w :]
        vals[pos] = tail
        vals[pos + L] = tail
        offs[pos] = offsets[n_entries - w :]
        self._head[slot] = (h + n_entries) % L
        self._count[slot] = min(count + n_entries, L)
        self._last_ts[slot] = int(ts[-1])
        return ready

    # -- asset slots -------------------------------------------------------------------------

    def _admit(self, asset: str, partition: int, *, replay: bool = False) -> int | None:
        if len(self._assets) >= self.max_assets and not replay:
            if not self._evict:
                return None
            _, idle = self._assets.popitem(last=False)
            self._release(idle)
            self._evictions += 1
        if not self._free:
            size = self.slab_size
            vals = np.zeros((size, 2 * self.length, self.n_features), dtype=np.float32)
            offs = np.zeros((size, self.length), dtype=np.int64)
            base = len(self._slabs) * size
            self._slabs.append((vals, offs))
            for name in _STATE_ARRAYS:
                old = getattr(self, name)
                grown = np.zeros(base + size, dtype=old.dtype)
                grown[:base] = old
                setattr(self, name, grown)
            self._names.extend([None] * size)
            # Reversed so that pop() hands out the lowest slot first.
            self._free.extend(range(base + size - 1, base - 1, -1))
        slot = self._free.pop()
        self._count[slot] = 0
        self._head[slot] = 0
        self._last_ts[slot] = 0
        self._phase[slot] = self.stride
        self._part[slot] = partition
        self._used[slot] = True
        self._seen[slot] = self._seen_mark
        self._names[slot] = asset
        self._assets[asset] = slot
        return slot

    def _release(self, slot: int) -> None:
        self._used[slot] = False
        self._names[slot] = None
        self._free.append(slot)

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

    def _make_room(self, k: int) -> None:
        """Grow the pending buffers (keeping what they hold) to take ``k`` more windows."""
        i = self._pn
        if i + k > self._pcap:
            old = self._pending_arrays()
            self._alloc_pending(max(2 * self._pcap, i + k))
            for src, dst in zip(old, self._pending_arrays(), strict=True):
                dst[:i] = src[:i]

    def _reserve(self, k: int) -> int:
        """Make room for ``k`` more pending windows and claim them; return the first's index."""
        self._make_room(k)
        i = self._pn
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
        # Fresh buffers, so the batch stays valid while the caller scores it. Their capacity
        # stays: untouched pages of np.empty cost no memory, and a growing buffer is copied.
        self._pn = 0
        self._pnames = []
        self._alloc_pending(max(self._pcap, n))
        return batch

    # -- commits, rebalances, resets ---------------------------------------------------------

    def _needed(self, slots: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """Per slot, the offset of the oldest of its last ``L - 1`` readings."""
        L = self.length
        pos = (self._head[slots] - np.minimum(self._count[slots], L - 1)) % L
        out = np.empty(slots.shape[0], dtype=np.int64)
        size = self.slab_size
        slab_of = slots // size
        for s in np.unique(slab_of).tolist():
            mine = slab_of == s
            out[mine] = self._slabs[s][1][slots[mine] % size, pos[mine]]
        return out

    def _idle(self, slots: npt.NDArray[np.intp], idle_ms: int) -> npt.NDArray[np.bool_]:
        """Which of ``slots`` (assets with readings) have their last reading more than
        ``idle_ms`` before their partition's clock: the median last reading of the partition's
        assets appended to since the previous :meth:`expire_idle` (of all its assets if none
        was). The median, not the newest, so that one asset with a clock far ahead moves
        nothing; of recent assets only, so that many silent ones do not hold the clock back."""
        parts = self._part[slots]
        last = self._last_ts[slots]
        recent = self._seen[slots] >= self._epoch - 1
        idle = np.zeros(slots.shape[0], dtype=bool)
        for p in np.unique(parts).tolist():
            mine = parts == p
            live = mine & recent
            clock = float(np.median(last[live if live.any() else mine]))
            idle[mine] = last[mine] < clock - idle_ms
        return idle

    def min_needed_offsets(self) -> dict[int, int]:
        """:meth:`min_needed_offset` of every partition that has assets, in one pass."""
        slots = np.flatnonzero(self._used & (self._count > 0))
        if slots.size == 0:
            return {}
        if self.idle_timeout_ms is not None:
            slots = slots[~self._idle(slots, self.idle_timeout_ms)]
        parts = self._part[slots]
        needed = self._needed(slots)
        order = np.lexsort((needed, parts))
        parts, needed = parts[order], needed[order]
        first = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1]])
        return dict(zip(parts[first].tolist(), needed[first].tolist(), strict=True))

    def min_needed_offset(self, partition: int) -> int | None:
        """Smallest offset among the last ``L - 1`` readings of the partition's assets.

        ``None`` when no asset of ``partition`` is tracked. Pending windows are not included.
        """
        return self.min_needed_offsets().get(partition)

    def expire_idle(self) -> list[str]:
        """Drop assets that have gone quiet; return their names. Call it periodically.

        An asset is dropped when it was not appended to since the previous call (replayed
        readings do not count, see :meth:`append`) *and* its
        last reading is older (event time) than the median of its partition's assets by more
        than ``idle_timeout_ms`` and by more than a gap that resets a window anyway
        (``max_gap_steps + 2`` intervals): should it come back, its window starts over just as
        it would have after that gap. Both conditions are needed: a stalled consumer (broker
        down) appends to nobody, and an asset whose clock runs behind the others is appended
        to all the time. Frees the asset's slot (``max_assets`` counts live assets) and its
        place in :meth:`min_needed_offsets`. Does nothing without ``idle_timeout_ms``.
        """
        self._epoch += 1
        if self.idle_timeout_ms is None:
            return []
        idle_ms = max(self.idle_timeout_ms, (self.max_gap_steps + 2) * self.interval_ms)
        live = np.flatnonzero(self._used)
        quiet = live[self._idle(live, idle_ms) & (self._seen[live] < self._epoch - 1)]
        gone = [name for s in quiet.tolist() if (name := self._names[s]) is not None]
        for name in gone:
            self._release(self._assets.pop(name))
        self._expired += len(gone)
        return gone

    def forget_partition(self, partition: int) -> int:
        """Drop the assets whose last append came from ``partition`` and its pending windows.

        Call :meth:`collect` first to keep the pending windows. Returns the assets dropped.
        """
        slots = np.flatnonzero(self._used & (self._part == partition)).tolist()
        for slot in slots:
            name = self._names[slot]
            assert name is not None
            del self._assets[name]
            self._release(slot)
        n = self._pn
        if n:
            keep = np.flatnonzero(self._ppart[:n] != partition)
            k = keep.shape[0]
            if k < n:
                for arr in self._pending_arrays():
                    arr[:k] = arr[keep]
                self._pnames = [self._pnames[j] for j in keep.tolist()]
                self._pn = k
        return len(slots)

    def reset(self) -> None:
        """Drop every asset, slab and pending window (cumulative counters are kept)."""
        self._assets.clear()
        self._slabs.clear()
        self._free.clear()
        self._names.clear()
        for name in _STATE_ARRAYS:
            setattr(self, name, np.zeros(0, dtype=getattr(self, name).dtype))
        self._pn = 0
        self._pnames = []
        self._alloc_pending(_MIN_PENDING)
