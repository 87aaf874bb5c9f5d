"""Load and validate training data: CSV/Parquet files of normal multivariate sensor readings.

The trainer only ever sees :class:`Segment` objects: contiguous, evenly sampled runs of one
asset's normal rows, so a window built inside a segment never spans a gap or an anomaly.

Rules
-----
Timestamps
    ISO-8601 strings (naive ones are taken as UTC, offsets are converted to UTC), datetime
    columns, or numeric epochs. A numeric column is epoch *milliseconds* when the median of its
    absolute values is at least 1e11 and epoch *seconds* otherwise: 1e11 s is the year 5138 and
    1e11 ms is March 1973, so no plausible plant timestamp is ambiguous. The unit is decided per
    file. Without a timestamp column, rows are evenly spaced at ``interval_s`` (default 1 s) in
    file order, starting at the epoch.
Sampling interval
    ``interval_s`` if given, else the median positive difference between consecutive timestamps
    of the same asset, over all assets and files.
Segments
    Each asset's rows are sorted by timestamp. A new segment starts where the asset or the source
    file changes, where a run of ``label == 1`` rows was removed, and where consecutive
    timestamps are more than 1.5 x the interval apart. Segments shorter than ``min_rows`` are
    dropped (they cannot hold a single window); if none is left that is an error.
Missing values (NaN / empty cells)
    Inside a used segment, a run of at most ``max_gap_steps`` missing values in a column is
    forward-filled from the row before it (back-filled at the start of a segment); a longer run
    is an error. Infinite values, constant columns and missing-value runs are checked only on the
    rows used for training; unparseable values are errors wherever they appear.
Labels
    If the label column is present, its values must be 0 or 1 and only the 0 rows are used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes

from monitor.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: File types read by :func:`load_training_data`.
SUFFIXES = (".csv", ".parquet")

_MS_THRESHOLD = 1e11
_GAP_FACTOR = 1.5
_NS_PER_S = 1_000_000_000
# datetime64[ns] covers 1677-09-21 .. 2262-04-11; stay just inside it.
_NS_LIMIT = 9.2e18
_TS_MIN = pd.Timestamp("1677-09-22", tz="UTC")
_TS_MAX = pd.Timestamp("2262-04-10", tz="UTC")

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Segment:
    """A contiguous, evenly sampled run of one asset's normal readings.

    The arrays are read-only views into one buffer shared by all segments of a dataset.
    """

    asset: str
    timestamps: npt.NDArray[np.int64]  # epoch nanoseconds, shape [rows]
    values: npt.NDArray[np.float32]  # shape [rows, n_features], in Dataset.features order
    source: str  # file the rows came from
    first_row: int  # 1-based data-row number in that file of values[0]


@dataclass(frozen=True)
class Fingerprint:
    """Identifies the training data a model was fitted on."""

    sha256: str  # over the raw bytes of the input files, in sorted path order
    rows: int  # rows used
    start: str | None  # ISO-8601 of the first timestamp; None without a timestamp column
    end: str | None
    files: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Validated training data, ready for windowing."""

    features: tuple[str, ...]
    segments: tuple[Segment, ...]
    sampling_interval_s: float
    fingerprint: Fingerprint


@dataclass
class _Part:
    """The selected rows of one file, parsed but not yet sorted or filtered."""

    file: int
    rows: I64  # 1-based data-row numbers
    assets: npt.NDArray[np.object_]
    timestamps: I64 | None
    anomalous: Mask
    values: F64


def load_training_data(
    path: str | Path,
    *,
    columns: Sequence[str] | None = None,
    timestamp_column: str | None = "timestamp",
    asset_column: str | None = "asset",
    label_column: str = "label",
    ignore_columns: Sequence[str] = ("fault", "fault_sensors"),
    interval_s: float | None = None,
    max_gap_steps: int = 3,
    min_rows: int = 1,
    assets: str | None = None,
) -> Dataset:
    """Load a .csv/.parquet file, or a directory of them, into validated normal-only segments.

    ``columns`` selects the sensor columns (default: every numeric column that is not the
    timestamp, asset, label or an ignored column, in file order). Without an asset column each
    file is one asset named after its stem. ``assets`` is an fnmatch glob on asset names.
    ``min_rows`` is the window length: shorter segments are dropped. See the module docstring
    for the timestamp, segmentation and missing-value rules.

    Raises:
        DataError: the data cannot be used; the one-line message names file, column and row.
        ConfigError: the arguments contradict each other.
    """
    _check_arguments(
        columns, timestamp_column, asset_column, label_column, interval_s, max_gap_steps, min_rows
    )
    source = Path(path)
    files = _resolve_files(source)
    frames = [_read(file) for file in files]
    meta = {c for c in (timestamp_column, asset_column, label_column) if c is not None}
    meta.update(ignore_columns)
    features = _resolve_features(files, frames, columns, meta)
    if timestamp_column is not None and timestamp_column not in frames[0].columns:
        raise _missing_column(
            files[0],
            timestamp_column,
            frames[0],
            "; set the timestamp column to none if the data has no timestamps",
        )

    parts: list[_Part] = []
    seen_assets: set[str] = set()
    for index, (file, frame) in enumerate(zip(files, frames, strict=True)):
        part = _load_part(
            index,
            file,
            frame,
            features,
            timestamp_column,
            asset_column,
            label_column,
            assets,
            seen_assets,
        )
        if part is not None:
            parts.append(part)
    if assets is not None and not parts:
        raise DataError(
            f"{source}: no asset matches {assets!r}; assets: {_brief(sorted(seen_assets))}"
        )
    has_ts = timestamp_column is not None
    table = _concat(parts, has_ts)
    if len(table.rows) == 0:
        raise DataError(f"{source}: no data rows")
    return _build(
        source, files, features, table, timestamp_column, interval_s, max_gap_steps, min_rows
    )


def _check_arguments(
    columns: Sequence[str] | None,
    timestamp_column: str | None,
    asset_column: str | None,
    label_column: str,
    interval_s: float | None,
    max_gap_steps: int,
    min_rows: int,
) -> None:
    if max_gap_steps < 0:
        raise ConfigError(f"max_gap_steps must be >= 0, got {max_gap_steps}")
    if min_rows < 1:
        raise ConfigError(f"min_rows must be >= 1, got {min_rows}")
    if interval_s is not None and not (math.isfinite(interval_s) and interval_s > 0):
        raise ConfigError(f"interval_s must be a positive number of seconds, got {interval_s}")
    if columns is None:
        return
    if isinstance(columns, str):
        raise ConfigError(f"columns must be a list of column names, got the string {columns!r}")
    if len(columns) == 0:
        raise ConfigError("columns must name at least one sensor column")
    duplicated = sorted({c for c in columns if list(columns).count(c) > 1})
    if duplicated:
        raise ConfigError(f"columns lists {_quoted(duplicated)} more than once")
    for role, name in (
        ("timestamp", timestamp_column),
        ("asset", asset_column),
        ("label", label_column),
    ):
        if name is not None and name in columns:
            raise ConfigError(f"column {name!r} is the {role} column and cannot be a sensor")


def _resolve_files(source: Path) -> list[Path]:
    if not source.exists():
        raise DataError(f"{source}: no such file or directory")
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError(f"{source}: no .csv or .parquet files in directory")
        return files
    if source.suffix.lower() not in SUFFIXES:
        raise DataError(f"{source}: unsupported file type; expected .csv or .parquet")
    return [source]


def _read(file: Path) -> pd.DataFrame:
    """Read one file; any reader failure becomes a one-line DataError."""
    try:
        if file.suffix.lower() == ".parquet":
            frame = pd.read_parquet(file)
        else:
            # low_memory=False: type each column from all of its values, not per chunk.
            frame = pd.read_csv(file, low_memory=False)
    except (OSError, ValueError, pa.ArrowException) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{file}: cannot read file: {reason}") from exc
    # A stored Parquet index would break the position -> row-number mapping.
    frame = frame.reset_index(drop=True)
    frame.columns = pd.Index([str(c) for c in frame.columns])
    return frame


def _resolve_features(
    files: list[Path], frames: list[pd.DataFrame], columns: Sequence[str] | None, meta: set[str]
) -> tuple[str, ...]:
    if columns is not None:
        return tuple(columns)  # presence is checked per file in _load_part
    first = _sensor_columns(frames[0], meta)
    if not first:
        raise DataError(
            f"{files[0]}: no numeric sensor columns; columns: {_brief(list(frames[0].columns))}"
        )
    for file, frame in zip(files[1:], frames[1:], strict=True):
        other = _sensor_columns(frame, meta)
        extra = [c for c in other if c not in first]
        missing = [c for c in first if c not in other]
        if extra or missing:
            detail = "; ".join(
                text
                for text in (
                    f"extra {_quoted(extra)}" if extra else "",
                    f"missing {_quoted(missing)}" if missing else "",
                )
                if text
            )
            raise DataError(f"{file}: sensor columns differ from {files[0]}: {detail}")
    return tuple(first)


def _sensor_columns(frame: pd.DataFrame, meta: set[str]) -> list[str]:
    """Numeric non-meta columns; a text column counts if most of its values (if any) are numbers.

    The second rule lets a sensor column with a stray bad value be reported as such instead of
    being silently dropped from the features.
    """
    out = []
    for name in frame.columns:
        if name in meta:
            continue
        column = frame[name]
        if ptypes.is_numeric_dtype(column.dtype):
            out.append(name)
        elif ptypes.is_object_dtype(column.dtype) or ptypes.is_string_dtype(column.dtype):
            present = column.dropna()
            if len(present) == 0 or pd.to_numeric(present, errors="coerce").notna().mean() > 0.5:
                out.append(name)
    return out


def _load_part(
    index: int,
    file: Path,
    frame: pd.DataFrame,
    features: tuple[str, ...],
    timestamp_column: str | None,
    asset_column: str | None,
    label_column: str,
    glob: str | None,
    seen_assets: set[str],
) -> _Part | None:
    for name in (*features, *([timestamp_column] if timestamp_column else [])):
        if name not in frame.columns:
            raise _missing_column(file, name, frame)
    rows = np.arange(1, len(frame) + 1, dtype=np.int64)
    if asset_column is not None and asset_column in frame.columns:
        column = frame[asset_column]
        empty = column.isna().to_numpy()
        if empty.any():
            raise _fail(file, "empty asset id", asset_column, int(rows[empty.argmax()]))
        names = column.astype(str).to_numpy(dtype=object)
    else:
        names = np.full(len(frame), file.stem, dtype=object)
    if glob is not None:
        unique = [str(a) for a in pd.unique(names)]
        seen_assets.update(unique)
        chosen = [a for a in unique if fnmatch.fnmatchcase(a, glob)]
        selected = pd.Series(names).isin(chosen).to_numpy()
        if not selected.any():
            return None
        if not selected.all():
            frame = frame.loc[selected].reset_index(drop=True)
            rows = rows[selected]
            names = names[selected]

    timestamps = None
    if timestamp_column is not None:
        timestamps = _parse_timestamps(frame[timestamp_column], file, timestamp_column, rows)
    if label_column in frame.columns:
        anomalous = _parse_labels(frame[label_column], file, label_column, rows)
    else:
        anomalous = np.zeros(len(frame), dtype=np.bool_)
    values = np.empty((len(frame), len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        values[:, j] = _parse_numbers(frame[name], file, name, rows)
    return _Part(index, rows, names, timestamps, anomalous, values)


def _parse_numbers(column: pd.Series, file: Path, name: str, rows: I64) -> F64:
    if ptypes.is_numeric_dtype(column.dtype):
        return column.to_numpy(dtype=np.float64, na_value=np.nan)
    numeric = pd.to_numeric(column, errors="coerce")
    bad = (numeric.isna() & column.notna()).to_numpy()
    if bad.any():
        i = int(bad.argmax())
        raise _fail(file, f"non-numeric value {_show(column.iloc[i])}", name, int(rows[i]))
    return numeric.to_numpy(dtype=np.float64, na_value=np.nan)


def _parse_labels(column: pd.Series, file: Path, name: str, rows: I64) -> Mask:
    """Return True for anomalous (label 1) rows; anything but 0/1 is an error."""
    numeric = (
        column if ptypes.is_numeric_dtype(column.dtype) else pd.to_numeric(column, errors="coerce")
    )
    values: F64 = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~((values == 0) | (values == 1))
    if bad.any():
        i = int(bad.argmax())
        raise _fail(file, f"label must be 0 or 1, got {_show(column.iloc[i])}", name, int(rows[i]))
    anomalous: Mask = values == 1
    return anomalous


def _parse_timestamps(column: pd.Series, file: Path, name: str, rows: I64) -> I64:
    """Convert a timestamp column to int64 UTC epoch nanoseconds (rules: module docstring)."""
    if ptypes.is_bool_dtype(column.dtype):
        raise _fail(file, "boolean column cannot hold timestamps", name)
    if ptypes.is_numeric_dtype(column.dtype):
        return _epoch_to_ns(column, file, name, rows)
    # utc=True: naive values are taken as UTC, offsets are converted to UTC.
    parsed = pd.to_datetime(column, format="ISO8601", utc=True, errors="coerce")
    bad = (parsed.isna() | (parsed < _TS_MIN) | (parsed > _TS_MAX)).to_numpy()
    if bad.any() and not ptypes.is_datetime64_any_dtype(column.dtype):
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().mean() > 0.5:
            # Mostly numbers stored as text (one bad cell made the column text): epochs.
            bad = (numeric.isna() & column.notna()).to_numpy()
            if not bad.any():
                return _epoch_to_ns(numeric, file, name, rows, original=column)
    if bad.any():
        i = int(bad.argmax())
        raise _fail(file, f"bad timestamp {_show(column.iloc[i])}", name, int(rows[i]))
    naive = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return naive.to_numpy(dtype="datetime64[ns]").view(np.int64)


def _epoch_to_ns(
    numeric: pd.Series, file: Path, name: str, rows: I64, original: pd.Series | None = None
) -> I64:
    shown = numeric if original is None else original
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    if not finite.all():
        i = int((~finite).argmax())
        raise _fail(file, f"bad timestamp {_show(shown.iloc[i])}", name, int(rows[i]))
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    milliseconds = float(np.median(np.abs(values))) >= _MS_THRESHOLD
    scale = 1_000_000 if milliseconds else _NS_PER_S
    out_of_range = np.abs(values) * scale >= _NS_LIMIT
    if out_of_range.any():
        i = int(out_of_range.argmax())
        unit = "ms" if milliseconds else "s"
        raise _fail(
            file,
            f"bad timestamp {_show(shown.iloc[i])} (out of range as epoch {unit})",
            name,
            int(rows[i]),
        )
    if ptypes.is_integer_dtype(numeric.dtype):
        # Integer epochs convert exactly; going through float64 would round nanoseconds.
        return numeric.to_numpy(dtype=np.int64) * np.int64(scale)
    return np.round(values * scale).astype(np.int64)


@dataclass
class _Table:
    """All selected rows of all files, concatenated."""

    files: I64
    rows: I64
    assets: npt.NDArray[np.object_]
    timestamps: I64 | None
    anomalous: Mask
    values: F64


def _concat(parts: list[_Part], has_ts: bool) -> _Table:
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return _Table(
            empty,
            empty,
            np.zeros(0, dtype=object),
            empty if has_ts else None,
            np.zeros(0, dtype=np.bool_),
            np.zeros((0, 0)),
        )
    timestamps = None
    if has_ts:
        timestamps = np.concatenate([p.timestamps for p in parts if p.timestamps is not None])
    return _Table(
        files=np.concatenate([np.full(len(p.rows), p.file, dtype=np.int64) for p in parts]),
        rows=np.concatenate([p.rows for p in parts]),
        assets=np.concatenate([p.assets for p in parts]),
        timestamps=timestamps,
        anomalous=np.concatenate([p.anomalous for p in parts]),
        values=np.concatenate([p.values for p in parts]),
    )


def _build(
    source: Path,
    files: list[Path],
    features: tuple[str, ...],
    table: _Table,
    timestamp_column: str | None,
    interval_s: float | None,
    max_gap_steps: int,
    min_rows: int,
) -> Dataset:
    codes_raw, uniques = pd.factorize(table.assets, sort=True)
    codes = np.asarray(codes_raw, dtype=np.int64)
    asset_names = [str(a) for a in uniques]
    n = len(codes)

    if table.timestamps is not None:
        order = np.lexsort((table.timestamps, codes))
    else:
        order = np.lexsort((table.rows, table.files, codes))
    codes = codes[order]
    file_of = table.files[order]
    rows = table.rows[order]
    anomalous = table.anomalous[order]
    values = table.values[order]
    same_asset = codes[1:] == codes[:-1]

    if table.timestamps is not None:
        ts = table.timestamps[order]
        duplicate = same_asset & (ts[1:] == ts[:-1])
        if duplicate.any():
            j = int(duplicate.argmax()) + 1
            raise _fail(
                files[file_of[j]],
                f"duplicate timestamp {_iso(int(ts[j]))} for asset {asset_names[codes[j]]!r}"
                f" (also at {files[file_of[j - 1]]} row {rows[j - 1]})",
                timestamp_column,
                int(rows[j]),
            )
        interval = interval_s if interval_s is not None else _infer_interval(source, ts, same_asset)
    else:
        interval = interval_s if interval_s is not None else 1.0
        # Evenly spaced in file order, counting on across files of the same asset.
        group_start = np.flatnonzero(np.r_[True, ~same_asset])
        counts = np.diff(np.r_[group_start, n])
        position = np.arange(n) - np.repeat(group_start, counts)
        ts = np.round(position * (interval * _NS_PER_S)).astype(np.int64)

    # Runs of rows with the same asset, file and label; a removed label-1 run leaves a break.
    run_start = np.ones(n, dtype=np.bool_)
    run_start[1:] = ~same_asset | (file_of[1:] != file_of[:-1]) | (anomalous[1:] != anomalous[:-1])
    run = np.cumsum(run_start)
    keep = ~anomalous
    if not keep.any():
        raise DataError(
            f"{source}: no rows left after keeping label == 0 (all {n} rows are labelled 1)"
        )
    run, ts, codes, file_of, rows = run[keep], ts[keep], codes[keep], file_of[keep], rows[keep]
    values = values[keep]
    m = len(run)
    seg_start = np.ones(m, dtype=np.bool_)
    seg_start[1:] = (run[1:] != run[:-1]) | (np.diff(ts) > _GAP_FACTOR * interval * _NS_PER_S)

    starts = np.flatnonzero(seg_start)
    lengths = np.diff(np.r_[starts, m])
    long_enough = lengths >= min_rows
    if not long_enough.any():
        raise DataError(
            f"{source}: too few rows: the longest of {len(lengths)} segment(s) has"
            f" {int(lengths.max())} rows, {min_rows} needed (window length); {m} normal rows"
            f" in total"
        )
    if not long_enough.all():
        logger.info(
            "dropping %d segment(s) (%d rows) shorter than %d rows",
            int((~long_enough).sum()),
            int(lengths[~long_enough].sum()),
            min_rows,
        )
        used = np.repeat(long_enough, lengths)
        ts, codes, file_of, rows, values = (
            ts[used],
            codes[used],
            file_of[used],
            rows[used],
            values[used],
        )
        seg_start = seg_start[used]
        lengths = lengths[long_enough]
        starts = np.r_[0, np.cumsum(lengths)[:-1]]

    where = _Where(files, features, file_of, rows)
    infinite = np.isinf(values)
    if infinite.any():
        i, j = where.first(infinite)
        raise where.fail(i, j, f"infinite value {_show(values[i, j])}")
    values = _fill_gaps(values, seg_start, max_gap_steps, where)
    overflow = np.abs(values) > np.finfo(np.float32).max
    if overflow.any():
        i, j = where.first(overflow)
        raise where.fail(i, j, f"value {_show(values[i, j])} is out of float32 range")
    out = values.astype(np.float32)
    constant = out.max(axis=0) == out.min(axis=0)
    if constant.any():
        names = [features[j] for j in np.flatnonzero(constant)]
        what = f"column {names[0]!r} is" if len(names) == 1 else f"columns {_quoted(names)} are"
        raise DataError(
            f"{source}: {what} constant over the {len(out)} training rows; drop"
            f" {'it' if len(names) == 1 else 'them'} with --columns"
        )

    out.flags.writeable = False
    ts.flags.writeable = False
    segments = tuple(
        Segment(
            asset=asset_names[codes[s]],
            timestamps=ts[s : s + length],
            values=out[s : s + length],
            source=str(files[file_of[s]]),
            first_row=int(rows[s]),
        )
        for s, length in zip(starts.tolist(), lengths.tolist(), strict=True)
    )
    has_ts = timestamp_column is not None
    fingerprint = Fingerprint(
        sha256=_sha256(files),
        rows=len(out),
        start=_iso(int(ts.min())) if has_ts else None,
        end=_iso(int(ts.max())) if has_ts else None,
        files=tuple(str(f) for f in files),
    )
    logger.info(
        "loaded %d rows in %d segment(s) of %d asset(s) from %d file(s); interval %gs",
        len(out),
        len(segments),
        len({s.asset for s in segments}),
        len(files),
        interval,
    )
    return Dataset(features, segments, float(interval), fingerprint)


def _infer_interval(source: Path, ts: I64, same_asset: Mask) -> float:
    steps = np.diff(ts)[same_asset]
    steps = steps[steps > 0]
    if len(steps) == 0:
        raise DataError(
            f"{source}: cannot infer the sampling interval (no asset has two distinct"
            " timestamps); give it explicitly"
        )
    return float(np.median(steps)) / _NS_PER_S


@dataclass
class _Where:
    """Maps a position in the sorted rows back to file, row and column for messages."""

    files: list[Path]
    features: tuple[str, ...]
    file_of: I64
    rows: I64

    def first(self, mask: Mask) -> tuple[int, int]:
        i = int(mask.any(axis=1).argmax())
        return i, int(mask[i].argmax())

    def fail(self, i: int, j: int, what: str, last: int | None = None) -> DataError:
        row = str(self.rows[i]) if last is None else f"{self.rows[i]}-{self.rows[last]}"
        return DataError(
            f"{self.files[self.file_of[i]]}: column {self.features[j]!r}"
            f" {'row' if last is None else 'rows'} {row}: {what}"
        )


def _fill_gaps(values: F64, seg_start: Mask, max_gap_steps: int, where: _Where) -> F64:
    """Fill short missing-value runs within segments; longer runs are errors."""
    missing = np.isnan(values)
    if not missing.any():
        return values
    # Each row's segment bounds, so a fill never borrows a value from a neighbouring segment.
    n = len(values)
    starts = np.flatnonzero(seg_start)
    lengths = np.diff(np.r_[starts, n])
    seg_first = np.repeat(starts, lengths)
    seg_last = seg_first + np.repeat(lengths, lengths) - 1
    position = np.arange(n)
    filled = values.copy()
    for j in np.flatnonzero(missing.any(axis=0)).tolist():
        gap = missing[:, j]
        begins = gap.copy()
        begins[1:] &= ~gap[:-1] | seg_start[1:]
        run_lengths = np.bincount((np.cumsum(begins) - 1)[gap])
        too_long = run_lengths > max_gap_steps
        if too_long.any():
            k = int(too_long.argmax())
            first = int(np.flatnonzero(begins)[k])
            count = int(run_lengths[k])
            raise where.fail(
                first,
                j,
                f"{count} consecutive missing values (at most {max_gap_steps} are filled)",
                last=first + count - 1,
            )
        # Forward-fill from the last valid row; back-fill a run at the start of a segment.
        before = np.maximum.accumulate(np.where(gap, -1, position))
        after = np.minimum.accumulate(np.where(gap, n, position)[::-1])[::-1]
        source = np.where(before >= seg_first, before, after)
        unfillable = gap & (source > seg_last)
        if unfillable.any():
            i = int(unfillable.argmax())
            raise where.fail(
                i, j, "no value in this segment to fill missing values from", last=int(seg_last[i])
            )
        filled[gap, j] = values[source[gap], j]
    return filled


def _sha256(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _iso(ns: int) -> str:
    return pd.Timestamp(ns, unit="ns", tz="UTC").isoformat()


def _missing_column(file: Path, name: str, frame: pd.DataFrame, hint: str = "") -> DataError:
    return DataError(
        f"{file}: column {name!r} not found; available: {_brief(list(frame.columns))}{hint}"
    )


def _fail(file: Path, what: str, column: str | None = None, row: int | None = None) -> DataError:
    where = "".join(
        (
            f" column {column!r}" if column is not None else "",
            f" row {row}" if row is not None else "",
        )
    )
    return DataError(f"{file}:{where}: {what}" if where else f"{file}: {what}")


def _show(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _brief(names: Sequence[str], limit: int = 10) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"
