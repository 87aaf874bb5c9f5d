"""Tests for training.data: loading and validating training CSV/Parquet files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from monitor.errors import ConfigError, DataError
from training.data import Dataset, load_training_data

T0 = pd.Timestamp("2024-01-01T00:00:00Z")
NS = 1_000_000_000


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n")
    return path


def frame(n: int = 6, *, asset: str = "pump-1", start: int = 0, step_s: int = 1) -> pd.DataFrame:
    """n evenly spaced rows of two varying sensors."""
    seconds = start + step_s * np.arange(n)
    return pd.DataFrame(
        {
            "timestamp": [(T0 + pd.Timedelta(seconds=int(s))).isoformat() for s in seconds],
            "asset": asset,
            "flow": np.arange(n, dtype=float) + 0.5,
            "pressure": 10.0 - np.arange(n, dtype=float),
        }
    )


def to_csv(df: pd.DataFrame, path: Path) -> Path:
    df.to_csv(path, index=False)
    return path


def load_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(DataError) as info:
        load_training_data(path, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


def seconds(ds: Dataset, k: int = 0) -> list[float]:
    steps = ds.segments[k].timestamps - ds.segments[k].timestamps[0]
    return [float(x) / NS for x in steps]


# --- happy paths -------------------------------------------------------------------------------


def test_single_file(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "plant.csv",
        """
timestamp,asset,flow,pressure,fault
2024-01-01T00:00:00,pump-1,1.5,10,x
2024-01-01T00:00:01,pump-1,2.5,11,y
2024-01-01T00:00:02,pump-1,3.5,13,z
""",
    )
    ds = load_training_data(path)
    assert ds.features == ("flow", "pressure")
    assert ds.sampling_interval_s == 1.0
    [seg] = ds.segments
    assert seg.asset == "pump-1"
    assert seg.source == str(path)
    assert seg.first_row == 1
    assert seg.values.dtype == np.float32
    np.testing.assert_array_equal(seg.values, [[1.5, 10], [2.5, 11], [3.5, 13]])
    assert seg.timestamps.dtype == np.int64
    assert seg.timestamps[0] == T0.value
    assert seconds(ds) == [0.0, 1.0, 2.0]
    assert ds.fingerprint.rows == 3
    assert ds.fingerprint.start == "2024-01-01T00:00:00+00:00"
    assert ds.fingerprint.end == "2024-01-01T00:00:02+00:00"
    assert ds.fingerprint.files == (str(path),)


def test_columns_select_and_order_features(tmp_path: Path) -> None:
    path = to_csv(frame(), tmp_path / "plant.csv")
    ds = load_training_data(path, columns=["pressure", "flow"])
    assert ds.features == ("pressure", "flow")
    np.testing.assert_array_equal(ds.segments[0].values[0], [10.0, 0.5])


def test_rows_are_sorted_by_timestamp_and_offsets_converted_to_utc(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "plant.csv",
        """
timestamp,flow
2024-01-01T01:00:02+01:00,3
2024-01-01T00:00:00Z,1
2024-01-01T00:00:01,2
""",
    )
    ds = load_training_data(path, asset_column=None)
    [seg] = ds.segments
    np.testing.assert_array_equal(seg.values[:, 0], [1, 2, 3])
    assert seg.timestamps[0] == T0.value
    assert seconds(ds) == [0.0, 1.0, 2.0]
    assert seg.first_row == 2  # the earliest row is the file's second data row


def test_directory_of_files(tmp_path: Path) -> None:
    to_csv(frame(asset="pump-2"), tmp_path / "b.csv")
    to_csv(frame(asset="pump-1"), tmp_path / "a.csv")
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_training_data(tmp_path)
    assert [s.asset for s in ds.segments] == ["pump-1", "pump-2"]
    assert [s.source for s in ds.segments] == [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    assert ds.fingerprint.files == (str(tmp_path / "a.csv"), str(tmp_path / "b.csv"))
    assert ds.fingerprint.rows == 12


def test_same_asset_across_files_splits_at_file_boundary(tmp_path: Path) -> None:
    to_csv(frame(4), tmp_path / "jan.csv")
    to_csv(frame(4, start=4), tmp_path / "feb.csv")
    ds = load_training_data(tmp_path)
    assert [(s.source, s.first_row, len(s.values)) for s in ds.segments] == [
        (str(tmp_path / "jan.csv"), 1, 4),
        (str(tmp_path / "feb.csv"), 1, 4),
    ]


def test_parquet_with_datetime_column(tmp_path: Path) -> None:
    df = frame()
    df["timestamp"] = pd.to_datetime(df["timestamp"]).dt.tz_convert("Europe/Berlin")
    path = tmp_path / "plant.parquet"
    df.to_parquet(path)
    ds = load_training_data(path)
    [seg] = ds.segments
    assert seg.timestamps[0] == T0.value
    np.testing.assert_array_equal(seg.values[:, 0], df["flow"].to_numpy(dtype=np.float32))
    assert ds.fingerprint.start == "2024-01-01T00:00:00+00:00"


def test_parquet_with_naive_datetime_is_utc(tmp_path: Path) -> None:
    df = frame()
    df["timestamp"] = pd.to_datetime(df["timestamp"]).dt.tz_localize(None)
    path = tmp_path / "plant.parquet"
    df.to_parquet(path)
    assert load_training_data(path).segments[0].timestamps[0] == T0.value


def test_no_timestamp_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "flow,pressure\n1,5\n2,4\n3,7\n")
    ds = load_training_data(path, timestamp_column=None, interval_s=0.5)
    assert ds.sampling_interval_s == 0.5
    assert len(ds.segments) == 1
    assert seconds(ds) == [0.0, 0.5, 1.0]
    assert ds.fingerprint.start is None
    assert ds.fingerprint.end is None
    assert load_training_data(path, timestamp_column=None).sampling_interval_s == 1.0


def test_no_timestamp_column_keeps_file_order_and_label_breaks(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "flow,label\n1,0\n2,0\n9,1\n3,0\n4,0\n")
    ds = load_training_data(path, timestamp_column=None)
    assert [s.values[:, 0].tolist() for s in ds.segments] == [[1, 2], [3, 4]]
    # The removed row still takes its place on the synthetic time axis.
    assert ds.segments[1].timestamps[0] == 3 * NS


def test_no_asset_column_uses_file_stem(tmp_path: Path) -> None:
    df = frame().drop(columns="asset")
    to_csv(df, tmp_path / "compressor-7.csv")
    ds = load_training_data(tmp_path / "compressor-7.csv")
    assert [s.asset for s in ds.segments] == ["compressor-7"]
    ds = load_training_data(to_csv(frame(), tmp_path / "x.csv"), asset_column=None)
    assert [s.asset for s in ds.segments] == ["x"]


def test_numeric_asset_ids_become_strings(tmp_path: Path) -> None:
    df = pd.concat([frame(asset="1"), frame(asset="2")])
    df["asset"] = df["asset"].astype(int)
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    assert [s.asset for s in ds.segments] == ["1", "2"]


def test_label_filter_splits_segments(tmp_path: Path) -> None:
    df = frame(10)
    df["label"] = [0, 0, 0, 1, 1, 0, 0, 0, 0, 1]
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    assert [(s.first_row, len(s.values)) for s in ds.segments] == [(1, 3), (6, 4)]
    np.testing.assert_array_equal(ds.segments[1].values[:, 0], [5.5, 6.5, 7.5, 8.5])
    assert ds.fingerprint.rows == 7


def test_label_run_splits_even_without_a_time_gap(tmp_path: Path) -> None:
    # The anomalous row sits between two samples that are one interval apart.
    path = write_csv(
        tmp_path / "plant.csv",
        "timestamp,flow,label\n0,1,0\n1,2,0\n2,3,0\n2.5,9,1\n3,4,0\n4,5,0\n",
    )
    ds = load_training_data(path)
    assert ds.sampling_interval_s == 1.0
    assert [s.values[:, 0].tolist() for s in ds.segments] == [[1, 2, 3], [4, 5]]


def test_boolean_labels(tmp_path: Path) -> None:
    df = frame(4)
    df["label"] = [False, True, False, False]
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    assert [len(s.values) for s in ds.segments] == [1, 2]


def test_time_gap_splits_segments(tmp_path: Path) -> None:
    df = frame(8, step_s=10)
    # 10 s sampling: a 15 s step stays in one segment, a 16 s step (> 1.5 x 10 s) splits.
    df["timestamp"] = [
        (T0 + pd.Timedelta(seconds=s)).isoformat() for s in [0, 10, 20, 35, 45, 61, 71, 81]
    ]
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    assert ds.sampling_interval_s == 10.0
    assert [(s.first_row, len(s.values)) for s in ds.segments] == [(1, 5), (6, 3)]


def test_interval_inference_uses_median_over_assets(tmp_path: Path) -> None:
    df = pd.concat([frame(5, asset="a", step_s=2), frame(7, asset="b", step_s=2)])
    df.loc[df.index[-1], "timestamp"] = (T0 + pd.Timedelta(seconds=100)).isoformat()
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    assert ds.sampling_interval_s == 2.0
    assert [len(s.values) for s in ds.segments] == [5, 6, 1]


def test_explicit_interval_overrides_inference(tmp_path: Path) -> None:
    path = to_csv(frame(6, step_s=2), tmp_path / "plant.csv")
    ds = load_training_data(path, interval_s=1.0)
    assert ds.sampling_interval_s == 1.0
    assert len(ds.segments) == 6  # every 2 s step is a gap at a 1 s interval


def test_short_nan_gap_is_forward_filled(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "plant.csv",
        """
timestamp,flow,pressure
0,,1
1,2,2
2,,3
3,,4
4,5,5
""",
    )
    ds = load_training_data(path, max_gap_steps=2)
    [seg] = ds.segments
    # The leading gap has nothing before it and is back-filled.
    np.testing.assert_array_equal(seg.values[:, 0], [2, 2, 2, 2, 5])
    assert not np.isnan(seg.values).any()


def test_nan_fill_does_not_cross_segments(tmp_path: Path) -> None:
    df = frame(6)
    df["label"] = [0, 0, 1, 0, 0, 0]
    df["flow"] = [1.0, 2.0, 3.0, np.nan, 4.0, 5.0]
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    np.testing.assert_array_equal(ds.segments[1].values[:, 0], [4, 4, 5])


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        ([1_704_067_200, 1_704_067_201, 1_704_067_202], 1.0),
        ([1_704_067_200_000, 1_704_067_201_000, 1_704_067_202_000], 1.0),
        ([1_704_067_200_000, 1_704_067_200_250, 1_704_067_200_500], 0.25),
        ([1_704_067_200.0, 1_704_067_200.5, 1_704_067_201.0], 0.5),
    ],
    ids=["seconds", "milliseconds", "milliseconds-sub-second", "float-seconds"],
)
def test_epoch_seconds_and_milliseconds(
    tmp_path: Path, epochs: list[float], expected: float
) -> None:
    df = pd.DataFrame({"timestamp": epochs, "flow": [1.0, 2.0, 3.0]})
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"))
    assert ds.segments[0].timestamps[0] == T0.value
    assert ds.sampling_interval_s == expected


def test_assets_glob(tmp_path: Path) -> None:
    df = pd.concat([frame(asset="pump-1"), frame(asset="fan-1"), frame(asset="pump-2")])
    path = to_csv(df, tmp_path / "plant.csv")
    ds = load_training_data(path, assets="pump-*")
    assert [s.asset for s in ds.segments] == ["pump-1", "pump-2"]
    assert [s.first_row for s in ds.segments] == [1, 13]
    message = load_error(path, assets="valve-*")
    assert str(path) in message
    assert "'valve-*'" in message
    assert "fan-1, pump-1, pump-2" in message


def test_assets_glob_skips_bad_rows_of_other_assets(tmp_path: Path) -> None:
    df = pd.concat([frame(asset="pump-1"), frame(asset="fan-1")])
    df["flow"] = df["flow"].astype(object)
    df.iat[8, 2] = "abc"  # flow
    path = to_csv(df, tmp_path / "plant.csv")
    assert len(load_training_data(path, assets="pump-*").segments) == 1
    assert "row 9" in load_error(path)


def test_min_rows_drops_short_segments(tmp_path: Path) -> None:
    df = frame(10)
    df["label"] = [0, 0, 1, 0, 0, 0, 0, 0, 1, 0]
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"), min_rows=3)
    assert [(s.first_row, len(s.values)) for s in ds.segments] == [(4, 5)]
    assert ds.fingerprint.rows == 5


def test_arrays_are_read_only(tmp_path: Path) -> None:
    seg = load_training_data(to_csv(frame(), tmp_path / "plant.csv")).segments[0]
    with pytest.raises(ValueError, match="read-only"):
        seg.values[0, 0] = 1.0


def test_fingerprint_is_stable_and_tracks_content(tmp_path: Path) -> None:
    path = to_csv(frame(), tmp_path / "plant.csv")
    first = load_training_data(path).fingerprint
    assert load_training_data(path).fingerprint == first
    assert len(first.sha256) == 64
    copy = tmp_path / "copy"
    copy.mkdir()
    to_csv(frame(), copy / "other-name.csv")
    assert load_training_data(copy).fingerprint.sha256 == first.sha256

    df = frame()
    df.loc[2, "flow"] = 99.0
    to_csv(df, path)
    assert load_training_data(path).fingerprint.sha256 != first.sha256


# --- errors ------------------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert load_error(path) == f"{path}: no such file or directory"


def test_directory_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    assert load_error(tmp_path) == f"{tmp_path}: no .csv or .parquet files in directory"


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "plant.xlsx"
    path.write_text("x")
    assert load_error(path).startswith(f"{path}: unsupported file type")


def test_unparseable_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "timestamp,flow\n0,1\n1,2,3,4\n")
    assert load_error(path).startswith(f"{path}: cannot read file: ")


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "plant.csv"
    path.write_text("")
    assert load_error(path).startswith(f"{path}: cannot read file: ")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "plant.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    assert load_error(path).startswith(f"{path}: cannot read file: ")


def test_header_only_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "timestamp,flow")
    assert load_error(path) == f"{path}: no data rows"


def test_requested_column_missing(tmp_path: Path) -> None:
    path = to_csv(frame(), tmp_path / "plant.csv")
    message = load_error(path, columns=["flow", "temp"])
    assert message == (
        f"{path}: column 'temp' not found; available: timestamp, asset, flow, pressure"
    )


def test_timestamp_column_missing(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "flow\n1\n2\n")
    message = load_error(path)
    assert message.startswith(f"{path}: column 'timestamp' not found; available: flow")
    assert "none" in message


def test_directory_files_with_differing_columns(tmp_path: Path) -> None:
    to_csv(frame(), tmp_path / "a.csv")
    df = frame().drop(columns="pressure")
    df["temp"] = np.arange(len(df), dtype=float)
    to_csv(df, tmp_path / "b.csv")
    message = load_error(tmp_path)
    assert message == (
        f"{tmp_path / 'b.csv'}: sensor columns differ from {tmp_path / 'a.csv'}:"
        " extra 'temp'; missing 'pressure'"
    )


def test_directory_file_missing_requested_column(tmp_path: Path) -> None:
    to_csv(frame(), tmp_path / "a.csv")
    to_csv(frame().drop(columns="pressure"), tmp_path / "b.csv")
    message = load_error(tmp_path, columns=["flow", "pressure"])
    assert message.startswith(f"{tmp_path / 'b.csv'}: column 'pressure' not found")


def test_non_numeric_value(tmp_path: Path) -> None:
    df = frame(10)
    df["flow"] = df["flow"].astype(object)
    df.loc[6, "flow"] = "abc"
    path = to_csv(df, tmp_path / "plant.csv")
    assert load_error(path) == f"{path}: column 'flow' row 7: non-numeric value 'abc'"


def test_non_numeric_value_in_parquet(tmp_path: Path) -> None:
    df = frame(4)
    df["flow"] = ["1", "2", "x", "4"]
    path = tmp_path / "plant.parquet"
    df.to_parquet(path)
    assert load_error(path) == f"{path}: column 'flow' row 3: non-numeric value 'x'"


def test_long_nan_run(tmp_path: Path) -> None:
    df = frame(10)
    df.loc[2:5, "pressure"] = np.nan
    path = to_csv(df, tmp_path / "plant.csv")
    message = load_error(path, max_gap_steps=3)
    assert message == (
        f"{path}: column 'pressure' rows 3-6: 4 consecutive missing values (at most 3 are filled)"
    )
    assert load_training_data(path, max_gap_steps=4).fingerprint.rows == 10


def test_nan_runs_are_counted_per_segment(tmp_path: Path) -> None:
    df = frame(9)
    df["label"] = [0, 0, 0, 0, 1, 0, 0, 0, 0]
    df.loc[[2, 3, 5, 6], "flow"] = np.nan  # two missing at the end of one segment, two at the start
    ds = load_training_data(to_csv(df, tmp_path / "plant.csv"), max_gap_steps=2)
    assert [s.values[:, 0].tolist() for s in ds.segments] == [
        [0.5, 1.5, 1.5, 1.5],
        [7.5, 7.5, 7.5, 8.5],
    ]


def test_all_nan_segment_cannot_be_filled(tmp_path: Path) -> None:
    df = frame(6)
    df["label"] = [0, 0, 1, 0, 1, 0]
    df.loc[3, "flow"] = np.nan
    message = load_error(to_csv(df, tmp_path / "plant.csv"))
    assert "column 'flow' rows 4-4: no value in this segment" in message


def test_infinite_value(tmp_path: Path) -> None:
    df = frame()
    df.loc[4, "pressure"] = np.inf
    path = to_csv(df, tmp_path / "plant.csv")
    assert load_error(path) == f"{path}: column 'pressure' row 5: infinite value 'inf'"


def test_value_out_of_float32_range(tmp_path: Path) -> None:
    df = frame()
    df.loc[1, "flow"] = 1e300
    path = to_csv(df, tmp_path / "plant.csv")
    assert (
        load_error(path) == f"{path}: column 'flow' row 2: value '1e+300' is out of float32 range"
    )


def test_constant_column(tmp_path: Path) -> None:
    df = frame()
    df["temp"] = 42.0
    path = to_csv(df, tmp_path / "plant.csv")
    message = load_error(path)
    assert message == (
        f"{path}: column 'temp' is constant over the 6 training rows; drop it with --columns"
    )
    assert load_training_data(path, columns=["flow", "pressure"]).features == ("flow", "pressure")


def test_constant_over_training_rows_only(tmp_path: Path) -> None:
    df = frame()
    df["temp"] = [1.0, 1.0, 1.0, 1.0, 1.0, 7.0]
    df["label"] = [0, 0, 0, 0, 0, 1]
    assert "column 'temp' is constant" in load_error(to_csv(df, tmp_path / "plant.csv"))


def test_too_few_rows(tmp_path: Path) -> None:
    df = frame(10)
    df["label"] = [0, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    path = to_csv(df, tmp_path / "plant.csv")
    message = load_error(path, min_rows=5)
    assert message == (
        f"{path}: too few rows: the longest of 3 segment(s) has 4 rows, 5 needed"
        " (window length); 8 normal rows in total"
    )


def test_no_rows_after_label_filter(tmp_path: Path) -> None:
    df = frame(4)
    df["label"] = 1
    path = to_csv(df, tmp_path / "plant.csv")
    assert load_error(path) == (
        f"{path}: no rows left after keeping label == 0 (all 4 rows are labelled 1)"
    )


def test_bad_iso_timestamp(tmp_path: Path) -> None:
    df = frame()
    df.loc[3, "timestamp"] = "2024-13-45T00:00:00"
    path = to_csv(df, tmp_path / "plant.csv")
    assert load_error(path) == (
        f"{path}: column 'timestamp' row 4: bad timestamp '2024-13-45T00:00:00'"
    )


def test_empty_timestamp(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "timestamp,flow\n0,1\n,2\n2,3\n")
    assert load_error(path) == f"{path}: column 'timestamp' row 2: bad timestamp 'nan'"


def test_text_in_epoch_timestamps(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "timestamp,flow\n0,1\n1,2\nsoon,3\n3,4\n")
    assert load_error(path) == f"{path}: column 'timestamp' row 3: bad timestamp 'soon'"


def test_duplicate_timestamp(tmp_path: Path) -> None:
    df = pd.concat([frame(4, asset="a"), frame(4, asset="b")], ignore_index=True)
    stamps = df["timestamp"].tolist()
    stamps[6] = stamps[5]
    df["timestamp"] = stamps
    path = to_csv(df, tmp_path / "plant.csv")
    message = load_error(path)
    assert message == (
        f"{path}: column 'timestamp' row 7: duplicate timestamp 2024-01-01T00:00:01+00:00"
        f" for asset 'b' (also at {path} row 6)"
    )


def test_duplicate_timestamp_across_files(tmp_path: Path) -> None:
    to_csv(frame(4), tmp_path / "a.csv")
    to_csv(frame(4, start=3), tmp_path / "b.csv")
    message = load_error(tmp_path)
    assert message.startswith(f"{tmp_path / 'b.csv'}: column 'timestamp' row 1: duplicate")
    assert f"(also at {tmp_path / 'a.csv'} row 4)" in message


@pytest.mark.parametrize("label", ["2", "-1", "yes", ""])
def test_bad_label(tmp_path: Path, label: str) -> None:
    path = write_csv(
        tmp_path / "plant.csv",
        f"timestamp,flow,label\n0,1,0\n1,2,0\n2,3,{label}\n3,4,0\n",
    )
    shown = label or "nan"
    assert load_error(path) == (
        f"{path}: column 'label' row 3: label must be 0 or 1, got {shown!r}"
    )


def test_empty_asset_id(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "plant.csv", "timestamp,asset,flow\n0,a,1\n1,,2\n")
    assert load_error(path) == f"{path}: column 'asset' row 2: empty asset id"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_gap_steps": -1}, "max_gap_steps"),
        ({"min_rows": 0}, "min_rows"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"interval_s": float("nan")}, "interval_s"),
        ({"columns": []}, "at least one"),
        ({"columns": "flow"}, "list of column names"),
        ({"columns": ["flow", "flow"]}, "more than once"),
        ({"columns": ["flow", "label"]}, "label column"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    path = to_csv(frame(), tmp_path / "plant.csv")
    with pytest.raises(ConfigError, match=match):
        load_training_data(path, **kwargs)  # type: ignore[arg-type]
