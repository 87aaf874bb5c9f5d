"""The plant simulator: determinism, chunking, schema, physics and injected faults."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.errors import ConfigError
from monitor.records import Reading, encode_json_batch, encode_json_reading
from training.sim.engine import BLOCK_STEPS, _counterfactual
from training.simulator import (
    FAULT_KINDS,
    SENSORS,
    PlantConfig,
    PlantSimulator,
    write,
    write_faults,
)

S = list(SENSORS)


def frame(sim: PlantSimulator, chunk_steps: int = 4096) -> pd.DataFrame:
    return pd.concat(sim.chunks(chunk_steps), ignore_index=True)


@pytest.fixture(scope="module")
def faulty() -> tuple[PlantSimulator, pd.DataFrame, pd.DataFrame]:
    """Two days of 4 pumps + 2 compressors with two episodes of every fault kind."""
    sim = PlantSimulator(PlantConfig(duration_s=2 * 86_400, seed=7, n_faults=12))
    twin = _counterfactual(sim)
    return sim, frame(sim), frame(twin)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    config = PlantConfig(duration_s=3_000, seed=3, n_faults=1)
    a, b = frame(PlantSimulator(config)), frame(PlantSimulator(config))
    pd.testing.assert_frame_equal(a, b)
    c = frame(PlantSimulator(PlantConfig(duration_s=3_000, seed=4, n_faults=1)))
    assert not np.allclose(a[S].to_numpy(), c[S].to_numpy())


def test_reading_twice_from_one_simulator_gives_the_same_rows() -> None:
    sim = PlantSimulator(
        PlantConfig(duration_s=3_000, seed=3, n_faults=2, fault_duration_s=(60, 600))
    )
    pd.testing.assert_frame_equal(frame(sim), frame(sim))


def test_chunk_size_does_not_change_rows() -> None:
    # Spans several internal blocks and has a stuck sensor that freezes across a boundary.
    sim = PlantSimulator(
        PlantConfig(
            duration_s=3 * BLOCK_STEPS + 100, seed=5, n_faults=4, fault_duration_s=(60, 900)
        )
    )
    big = frame(sim, 100_000)
    for chunk_steps in (1, 37, BLOCK_STEPS, 5_000):
        pd.testing.assert_frame_equal(frame(sim, chunk_steps), big)
    sizes = [len(f) for f in sim.chunks(1_000)]
    assert sizes == [1_000 * 6] * 3 + [(3 * BLOCK_STEPS + 100 - 3_000) * 6]


def test_schema_order_and_labels(faulty: tuple[PlantSimulator, pd.DataFrame, pd.DataFrame]) -> None:
    sim, df, _ = faulty
    assert list(df.columns) == ["timestamp", "asset", *S, "label", "fault", "fault_sensors"]
    assert str(df["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert all(df[c].dtype == np.float64 for c in S)
    assert np.isfinite(df[S].to_numpy()).all()
    assert sim.assets == ("compressor-01", "compressor-02", *(f"pump-0{i}" for i in range(1, 5)))
    assert len(df) == sim.rows == 2 * 86_400 * 6
    assert df["timestamp"].iloc[0] == pd.Timestamp("2026-01-01T00:00:00Z")
    assert (df["asset"].iloc[:6] == list(sim.assets)).all()
    keys = df[["timestamp", "asset"]]
    assert not keys.duplicated().any()
    assert keys.equals(keys.sort_values(["timestamp", "asset"]))
    normal = df["label"] == 0
    assert set(df["label"].unique()) == {0, 1}
    assert (df.loc[normal, "fault"] == "").all()
    assert (df.loc[normal, "fault_sensors"] == "").all()
    assert (df.loc[~normal, "fault"] != "").all()


def test_every_kind_labels_exactly_its_window(
    faulty: tuple[PlantSimulator, pd.DataFrame, pd.DataFrame],
) -> None:
    sim, df, _ = faulty
    assert sorted({e.kind for e in sim.faults}) == sorted(FAULT_KINDS)
    expected = pd.Series(0, index=df.index, dtype=np.int8)
    for e in sim.faults:
        window = (
            (df["asset"] == e.asset)
            & (df["timestamp"] >= pd.Timestamp(e.start))
            & (df["timestamp"] < pd.Timestamp(e.end))
        )
        assert window.sum() == e.end_step - e.start_step
        assert (df.loc[window, "fault"] == e.kind).all()
        assert (df.loc[window, "fault_sensors"] == ";".join(e.sensors)).all()
        expected[window] = 1
    assert (df["label"] == expected).all()


def test_faults_move_their_sensors_and_nothing_else(
    faulty: tuple[PlantSimulator, pd.DataFrame, pd.DataFrame],
) -> None:
    """Against the same plant with the faults' effects left out, in units of sensor noise."""
    sim, df, clean = faulty
    diff = (df[S] - clean[S]).abs()
    assert (diff[df["label"] == 0] == 0).all().all(), "a fault leaks outside its window"
    noise = dict(zip(sim.assets, sim._params.noise, strict=True))
    for e in sim.faults:
        rows = (df["asset"] == e.asset) & (df["label"] == 1) & (df["fault"] == e.kind)
        rows &= (df["timestamp"] >= pd.Timestamp(e.start)) & (df["timestamp"] < pd.Timestamp(e.end))
        effect = diff[rows].mean() / pd.Series(noise[e.asset], index=S)
        named = effect[list(e.sensors)]
        others = effect.drop(list(e.sensors))
        assert (named >= 2.0).all(), (e, effect.round(1).to_dict())
        assert others.max() < 0.4 * named.max(), (e, effect.round(1).to_dict())
        if e.kind == "stuck_sensor":
            stuck = df.loc[rows, e.sensors[0]]
            assert stuck.nunique() == 1
            assert clean.loc[rows, e.sensors[0]].std() > 0


def test_fault_shapes(faulty: tuple[PlantSimulator, pd.DataFrame, pd.DataFrame]) -> None:
    """Directions an operator would recognise."""
    sim, df, clean = faulty
    for e in sim.faults:
        rows = (df["asset"] == e.asset) & (df["fault"] == e.kind)
        rows &= (df["timestamp"] >= pd.Timestamp(e.start)) & (df["timestamp"] < pd.Timestamp(e.end))
        got, base = df.loc[rows, S].mean(), clean.loc[rows, S].mean()
        if e.kind == "bearing_wear":
            assert got["vibration_rms"] > base["vibration_rms"]
            assert got["bearing_temp"] > base["bearing_temp"]
        elif e.kind == "cavitation":
            assert got["suction_pressure"] < base["suction_pressure"]
            assert df.loc[rows, "flow"].std() > clean.loc[rows, "flow"].std()
        elif e.kind == "valve_step":
            assert got["flow"] < base["flow"]
            assert got["discharge_pressure"] > base["discharge_pressure"]
        elif e.kind == "leak":
            assert got["flow"] < base["flow"]
            assert got["discharge_pressure"] < base["discharge_pressure"]
            assert got["motor_current"] > base["motor_current"]
        elif e.kind == "sensor_drift":
            drift = (df.loc[rows, e.sensors[0]] - clean.loc[rows, e.sensors[0]]).abs()
            assert drift.iloc[-60:].mean() > drift.iloc[:60].mean()


def test_physics_is_plausible(faulty: tuple[PlantSimulator, pd.DataFrame, pd.DataFrame]) -> None:
    _, _, df = faulty
    pumps = df[df["asset"].str.startswith("pump")]
    stopped = pumps["motor_current"] < 2.0
    assert stopped.sum() > 100, "no pump stopped in two days"
    assert (pumps.loc[stopped, "flow"] < 4.0).all()
    assert (pumps.loc[stopped, "vibration_rms"] < 0.5).all()
    assert (
        (pumps.loc[stopped, "discharge_pressure"] - pumps.loc[stopped, "suction_pressure"]).abs()
        < 0.2
    ).all()
    # Running: delivering over half the asset's typical flow (not early in a start-up ramp).
    running = df["flow"] > df.groupby("asset")["flow"].transform("median") / 2
    assert (df.loc[running, "discharge_pressure"] > df.loc[running, "suction_pressure"] + 0.2).all()
    assert df["motor_voltage"].between(380, 420).all()
    assert (df[["flow", "vibration_rms", "motor_current"]] >= 0).all().all()
    # More speed, more flow, more current: the affinity laws hold across each asset's modes.
    for _, rows in df[df["motor_current"] > 5].groupby("asset"):
        assert rows["flow"].corr(rows["motor_current"]) > 0.8
        assert rows["flow"].corr(rows["vibration_rms"]) > 0.5
    # The daily ambient cycle shows in stopped machines' temperatures: warmer at 15:00 than 03:00.
    hour = pumps.loc[stopped, "timestamp"].dt.hour
    temps = pumps.loc[stopped, "fluid_temp"]
    if (hour.between(13, 17)).any() and (hour.between(1, 5)).any():
        assert temps[hour.between(13, 17)].mean() > temps[hour.between(1, 5)].mean()


def test_normal_only_config_has_no_labels() -> None:
    df = frame(PlantSimulator(PlantConfig(duration_s=4_000, fault_kinds=())))
    assert (df["label"] == 0).all()
    assert (df["fault"] == "").all()
    df = frame(PlantSimulator(PlantConfig(duration_s=4_000, n_faults=0)))
    assert (df["label"] == 0).all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip(tmp_path: Path, suffix: str) -> None:
    config = PlantConfig(
        duration_s=2_500,
        n_pumps=2,
        n_compressors=1,
        seed=2,
        n_faults=2,
        fault_duration_s=(300, 600),
    )
    expected = frame(PlantSimulator(config))
    summary = write(config, tmp_path / f"plant{suffix}", chunk_steps=700)
    assert summary.rows == len(expected)
    assert summary.assets == (
        "compressor-01",
        "pump-01",
        "pump-02",
    )
    assert len(summary.faults) == 2
    assert not list(tmp_path.glob("*.partial"))
    if suffix == ".csv":
        text = (tmp_path / "plant.csv").read_text().splitlines()
        assert text[1].startswith("2026-01-01T00:00:00Z,compressor-01,")
        got = pd.read_csv(tmp_path / "plant.csv", keep_default_na=False, dtype={"label": np.int8})
        got["timestamp"] = pd.to_datetime(got["timestamp"]).dt.as_unit("ms")
    else:
        got = pd.read_parquet(tmp_path / "plant.parquet")
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_exact=True)
    assert str(got["timestamp"].dtype) == "datetime64[ms, UTC]"


def test_write_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"plant\.txt.*\.csv or \.parquet"):
        write(PlantConfig(duration_s=10), tmp_path / "plant.txt")


def test_write_faults_json(tmp_path: Path) -> None:
    sim = PlantSimulator(PlantConfig(duration_s=20_000, n_faults=3))
    write_faults(sim.faults, tmp_path / "faults.json")
    got = json.loads((tmp_path / "faults.json").read_text())
    assert [g["asset"] for g in got] == [e.asset for e in sim.faults]
    first = sim.faults[0]
    assert got[0]["start_ms"] == first.start_ms
    assert got[0]["end_ms"] - got[0]["start_ms"] == (first.end_step - first.start_step) * 1000
    assert got[0]["start"].endswith("Z")


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"n_pumps": -1}, "n_pumps"),
        ({"n_pumps": 0, "n_compressors": 0}, "n_pumps"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": 0.0001}, "interval_s"),
        ({"duration_s": 0.5}, "duration_s"),
        ({"start": "yesterday"}, "start"),
        ({"start": "2026-01-01T00:00:00"}, "start"),
        ({"fault_kinds": ("gremlins",)}, "fault_kinds"),
        ({"fault_duration_s": (600, 60)}, "fault_duration_s"),
        ({"faults_per_asset_day": -1}, "faults_per_asset_day"),
        ({"seed": -1}, "seed"),
        ({"n_faults": 500, "duration_s": 7200}, "n_faults"),
    ],
)
def test_bad_config_names_the_setting(kwargs: dict[str, object], setting: str) -> None:
    with pytest.raises(ConfigError, match=setting) as info:
        PlantSimulator(PlantConfig(**kwargs))  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_subsecond_interval_and_start_offset() -> None:
    config = PlantConfig(
        interval_s=0.25,
        start="2026-03-01T12:00:00+02:00",
        duration_s=30,
        n_pumps=1,
        n_compressors=0,
    )
    df = frame(PlantSimulator(config))
    assert len(df) == 120
    assert df["timestamp"].iloc[0] == pd.Timestamp("2026-03-01T10:00:00Z")
    assert df["timestamp"].diff().iloc[1] == pd.Timedelta(milliseconds=250)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n_pumps=st.integers(0, 3),
    n_compressors=st.integers(0, 2),
    interval_s=st.sampled_from([0.5, 1.0, 5.0, 60.0]),
    steps=st.integers(20, 2_500),
    chunk_steps=st.integers(1, 3_000),
)
def test_any_plant_is_well_formed(
    seed: int, n_pumps: int, n_compressors: int, interval_s: float, steps: int, chunk_steps: int
) -> None:
    if n_pumps + n_compressors == 0:
        n_pumps = 1
    duration = steps * interval_s
    config = PlantConfig(
        seed=seed,
        n_pumps=n_pumps,
        n_compressors=n_compressors,
        interval_s=interval_s,
        duration_s=duration,
        n_faults=1 if duration >= 3_000 else 0,
        fault_duration_s=(10 * interval_s, 20 * interval_s),
    )
    sim = PlantSimulator(config)
    df = frame(sim, chunk_steps)
    assert len(df) == steps * (n_pumps + n_compressors)
    assert np.isfinite(df[S].to_numpy()).all()
    assert (df[["flow", "vibration_rms", "motor_current"]] >= 0).all().all()
    assert df["label"].sum() == sum(e.end_step - e.start_step for e in sim.faults)
    pd.testing.assert_frame_equal(df, frame(sim, 4096))


def test_json_encoders() -> None:
    one = json.loads(encode_json_reading("pump-01", 1_767_225_600_000, {"flow": 1.5, "x": 2.0}))
    assert one == {"asset": "pump-01", "ts": 1_767_225_600_000, "values": {"flow": 1.5, "x": 2.0}}
    batch = json.loads(
        encode_json_batch([Reading("p", 1, {"a": 1.0}), Reading("p", 2, {"a": 2.0})])
    )
    assert [r["ts"] for r in batch] == [1, 2]
    assert batch[1]["values"] == {"a": 2.0}
    with pytest.raises(Exception, match="flow is nan"):
        encode_json_reading("pump-01", 1, {"flow": float("nan")})


def test_plant_seed_keeps_the_machines_and_changes_the_day() -> None:
    base = PlantConfig(n_pumps=2, n_compressors=1, duration_s=600, n_faults=0, seed=11)
    same_plant = PlantConfig(
        n_pumps=2, n_compressors=1, duration_s=600, n_faults=0, seed=12, plant_seed=11
    )
    a, b = PlantSimulator(base), PlantSimulator(same_plant)
    # The same physical parameters per asset ...
    for f in dataclasses.fields(a._params):
        np.testing.assert_array_equal(getattr(a._params, f.name), getattr(b._params, f.name))
    # ... but another operating schedule and other noise.
    fa, fb = next(a.chunks()), next(b.chunks())
    assert not fa[list(a.sensors)].equals(fb[list(b.sensors)])
    # And plant_seed=None is the old behaviour: seed decides both.
    again = PlantSimulator(dataclasses.replace(base, plant_seed=11))
    pd.testing.assert_frame_equal(next(again.chunks()), fa)
