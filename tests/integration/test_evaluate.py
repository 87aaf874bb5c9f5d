"""The evaluation harness end to end on small synthetic data (no SKAB data in the repo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.evaluate import AlertOptions, ModelOptions, evaluate
from training.evaluate.protocols import SKAB_GROUPS
from training.evaluate.simdata import SimDataset, write_sim_dataset

pytestmark = pytest.mark.slow

SKAB_SENSORS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)


def _skab_like(root: Path, *, rows: int = 760, onset: int = 560, end: int = 660) -> Path:
    """A SKAB-shaped file (';'-separated, SKAB's columns, 1 Hz) with one step anomaly."""
    rng = np.random.default_rng(0)
    t = np.arange(rows)
    base = np.stack(
        [np.sin(2 * np.pi * t / (23 + 7 * j) + j) for j in range(len(SKAB_SENSORS))], axis=1
    )
    values = base + 0.05 * rng.standard_normal(base.shape)
    values[onset:end, 2:5] += 4.0
    frame = pd.DataFrame(values, columns=list(SKAB_SENSORS))
    frame.insert(0, "datetime", pd.date_range("2020-03-09 10:14:33", periods=rows, freq="s"))
    anomaly = np.zeros(rows)
    anomaly[onset:end] = 1
    cp = np.zeros(rows)
    cp[[onset, end]] = 1
    frame["anomaly"] = anomaly
    frame["changepoint"] = cp
    for group in SKAB_GROUPS:
        (root / group).mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / "valve1" / "0.csv", sep=";", index=False)
    return root


def test_skab_reference_rule_reproduces_the_conv_ae_baseline_behaviour(tmp_path: Path) -> None:
    root = _skab_like(tmp_path / "skab")
    result = evaluate(
        "skab",
        root,
        model=ModelOptions(window=16, epochs=10),
        alerts=AlertOptions(mode="reference"),
        work_dir=tmp_path / "work",
    )
    (r,) = result.replays
    L, n = 16, r.series.size
    # The notebook's rule, written out on its own indexing (residuals by window start).
    residual = r.score[L - 1 :]
    train = residual[: 400 - L + 1]
    ucl = np.quantile(train, 0.999) * 4 / 3
    assert r.limit == pytest.approx(ucl)
    expected = np.zeros(n, dtype=bool)
    for i in range(L - 1, len(residual) - L + 1):
        expected[i] = bool(np.all(residual[i - L + 1 : i] > ucl))
    assert r.flagged.tolist() == expected.tolist()
    # Its look-ahead finds the step where it is, to within a few points, with no false alarms.
    flagged = np.flatnonzero(r.flagged)
    assert abs(int(flagged[0]) - 560) <= 2
    assert abs(int(flagged[-1]) - 660) <= 2
    assert result.figures["far_pct"] < 1.0
    assert result.figures["f1"] > 0.95
    assert result.figures["nab_standard"] > 90


def test_skab_service_rule_and_outputs(tmp_path: Path) -> None:
    root = _skab_like(tmp_path / "skab")
    result = evaluate(
        "skab", root, model=ModelOptions(window=16, epochs=10), work_dir=tmp_path / "work"
    )
    figures = result.figures
    for key in ("f1", "far_pct", "mar_pct", "nab_standard", "nab_low_fp", "nab_low_fn"):
        assert np.isfinite(figures[key]), key
    (r,) = result.replays
    # The service detector only flags after k above-threshold windows: never before the onset.
    assert not r.flagged[:560].any()
    assert r.flagged[600:660].all()
    assert figures["roc_auc"] > 0.9
    out = result.write_json(tmp_path / "skab.json")
    doc = json.loads(out.read_text())
    assert doc["protocol"] == "skab"
    assert doc["f1"] == pytest.approx(figures["f1"])


def _small_sim(tmp_path: Path) -> Path:
    """A plant of one pump and a compressor: 1.5 h of training, 2 h of test with two faults."""
    return write_sim_dataset(
        tmp_path / "sim",
        SimDataset(
            n_pumps=1,
            n_compressors=1,
            train_hours=1.5,
            test_hours=2,
            n_faults=2,
            fault_kinds=("bearing_wear", "cavitation"),
        ),
    )


def test_generic_protocol_on_simulator_data(tmp_path: Path) -> None:
    data = _small_sim(tmp_path)
    result = evaluate(
        "generic",
        data,
        model=ModelOptions(window=16, epochs=3),
        alerts=AlertOptions(k=20, n=30, m=30),
        work_dir=tmp_path / "work",
    )
    f = result.figures
    for key in (
        "point.f1",
        "point.far_pct",
        "point.mar_pct",
        "event.precision",
        "event.recall",
        "event.f1",
        "mean_detection_delay_steps",
        "roc_auc",
        "pr_auc",
        "detection_rate_at_far_5pct",
        "attribution.window_top3",
    ):
        assert key in f, key
    assert f["event.segments"] >= 1
    assert 0.5 < f["roc_auc"] <= 1.0
    assert len(result.replays) == 2  # one series per asset of the test file
    doc = json.loads(result.write_json(tmp_path / "out" / "figures.json").read_text())
    assert doc["point.f1"] == pytest.approx(f["point.f1"])
    written = result.write_report(tmp_path / "report")
    assert (tmp_path / "report" / "report.md").is_file()
    assert sum(p.suffix == ".png" for p in written) == 2
    text = (tmp_path / "report" / "report.md").read_text()
    assert "point.f1" in text
    # One row per alert raised, each saying whether it overlaps a labelled anomaly, and the count
    # of labelled anomalies none overlaps: the event figures, alert by alert.
    rows = text.split("## Alerts", 1)[1].split("Labelled anomalies no alert overlaps: ", 1)
    names = tuple(f"| {r.series.name} |" for r in result.replays)
    alerts = [line for line in rows[0].splitlines() if line.startswith(names)]
    assert len(alerts) == f["event.alerts"] == sum(len(r.alerts) for r in result.replays)
    false = sum(line.endswith("| **no** |") for line in alerts)
    assert len(alerts) - false == round(f["event.precision"] * f["event.alerts"])
    missed = int(rows[1].split(".", 1)[0])
    assert missed == round(f["event.segments"] * (1 - f["event.recall"]))


def test_the_hold_keeps_held_windows_from_opening_alerts(tmp_path: Path) -> None:
    from monitor.errors import ConfigError
    from training.evaluate import GenericOptions

    data = _small_sim(tmp_path)
    rule = {"k": 20, "n": 30, "m": 30}
    plain = evaluate(
        "generic",
        data,
        model=ModelOptions(window=16, epochs=3),
        alerts=AlertOptions(**rule),
        work_dir=tmp_path / "work",
    )
    assert plain.figures["event.alerts"] >= 1
    bundle = GenericOptions(bundle=Path(plain.bundles["bundle"]))
    # Every window of every asset has a flow at or below this level: all are held.
    held = evaluate(
        "generic",
        data,
        alerts=AlertOptions(**rule, hold_sensor="flow", running_above=1e9),
        generic=bundle,
    )
    assert held.figures["event.alerts"] == 0
    assert "held while flow <= 1e+09 and 600 s after" in held.options["alert_rule"]
    # A level no reading reaches holds nothing: the same alerts as without a hold.
    none = evaluate(
        "generic",
        data,
        alerts=AlertOptions(**rule, hold_sensor="flow", running_above=-1e9),
        generic=bundle,
    )
    assert none.figures["event.alerts"] == plain.figures["event.alerts"]
    with pytest.raises(ConfigError, match="--hold-sensor: 'speed' is not a sensor"):
        evaluate("generic", data, alerts=AlertOptions(hold_sensor="speed"), generic=bundle)


def test_asset_groups_train_a_bundle_each_and_score_each_series_with_its_own(
    tmp_path: Path,
) -> None:
    from monitor.bundle import load_bundle
    from monitor.errors import DataError
    from training.evaluate import GenericOptions

    data = _small_sim(tmp_path)
    options = {"model": ModelOptions(window=16, epochs=3), "alerts": AlertOptions(k=20, n=30, m=30)}
    groups = ("compressor-*", "pump-*")
    result = evaluate(
        "generic",
        data,
        generic=GenericOptions(asset_groups=groups),
        work_dir=tmp_path / "work",
        **options,
    )
    assert set(result.bundles) == set(groups)
    bundles = {g: load_bundle(path) for g, path in result.bundles.items()}
    assert bundles["pump-*"].manifest.training_data.assets == ("pump-01",)
    assert bundles["compressor-*"].manifest.training_data.assets == ("compressor-01",)
    thresholds = {g: b.manifest.threshold.value for g, b in bundles.items()}
    assert thresholds["pump-*"] != thresholds["compressor-*"]
    by_asset = {r.series.asset: r for r in result.replays}
    assert by_asset["pump-01"].threshold == thresholds["pump-*"]
    assert by_asset["compressor-01"].threshold == thresholds["compressor-*"]
    assert result.options["asset_groups"] == list(groups)
    result.write_report(tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "- asset groups, a bundle each" in text
    assert "`compressor-*`, `pump-*`" in text
    # Scores of different bundles are pooled in units of their own thresholds.
    from training.evaluate import metrics

    relative = np.concatenate([r.score / r.threshold for r in result.replays])
    labels = np.concatenate([r.series.labels for r in result.replays])
    assert result.figures["roc_auc"] == pytest.approx(metrics.roc_auc(relative, labels))
    # A test series in no group is a mistake, named in one line.
    with pytest.raises(DataError, match=r"asset 'compressor-01' is in none of the asset groups"):
        evaluate(
            "generic",
            data,
            generic=GenericOptions(asset_groups=("pump-*",)),
            work_dir=tmp_path / "work-pumps",
            **options,
        )


@pytest.mark.kafka
def test_offline_and_online_agree_via_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    """The same test files through Kafka and a real Service: same scores, same alert events."""
    from training.evaluate.online import agree_via_kafka

    data = _small_sim(tmp_path)
    alerts = AlertOptions(k=4, n=6, m=6)
    result = evaluate(
        "generic",
        data,
        model=ModelOptions(window=16, epochs=3),
        alerts=alerts,
        work_dir=tmp_path / "work",
    )
    offline_events = sum(len(r.events) for r in result.replays)
    assert offline_events >= 2  # something to agree on: at least one alert opened and resolved
    agreement = agree_via_kafka(
        result.replays,
        Path(result.bundles["bundle"]),
        alerts.detector(16),
        bootstrap=kafka_bootstrap,
    )
    print(agreement.summary())
    assert agreement.agree, agreement.differences
    assert agreement.windows_matched == sum(int(np.isfinite(r.score).sum()) for r in result.replays)
    assert agreement.events_matched == offline_events
    assert agreement.max_rel_score_diff <= 1e-4

    # With detector.hold (the compressor stops: its flow drops to 0), offline and online agree
    # too, and the hold changed what alerted.
    from training.evaluate import GenericOptions

    held = AlertOptions(k=4, n=6, m=6, hold_sensor="flow", running_above=100.0, hold_s=60.0)
    with_hold = evaluate(
        "generic",
        result.options["data"],
        alerts=held,
        generic=GenericOptions(bundle=Path(result.bundles["bundle"])),
    )
    held_events = sum(len(r.events) for r in with_hold.replays)
    assert 0 < held_events < offline_events
    agreement = agree_via_kafka(
        with_hold.replays,
        Path(result.bundles["bundle"]),
        held.detector(16),
        bootstrap=kafka_bootstrap,
        hold=held.hold_settings(),
    )
    assert agreement.agree, agreement.differences
    assert agreement.events_matched == held_events


@pytest.mark.kafka
def test_asset_groups_online_are_one_service_with_a_route_per_group(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """``evaluate --asset-groups --via-kafka``: the bundle per group, trained and scored offline,
    served online by one Service with a route per group (Settings.routes) gives the same window
    scores and alert events."""
    import json

    from monitor.cli import main

    data = _small_sim(tmp_path)
    out = tmp_path / "figures.json"
    args = [
        "evaluate", "--protocol", "generic", "--data", str(data), "--window", "16",
        "--epochs", "3", "--k", "4", "--n", "6", "--m", "6",
        "--asset-groups", "compressor-*,pump-*", "--via-kafka", "--bootstrap", kafka_bootstrap,
        "--json", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(out.read_text())
    agreement = doc["kafka_agreement"]
    assert agreement["agree"], agreement["differences"]
    assert agreement["series"] == 2
    assert agreement["windows_matched"] == agreement["windows_offline"] > 0
    assert agreement["events_matched"] == agreement["events_offline"] >= 2


def test_skab_ignore_sensors_leaves_them_out_of_the_model(tmp_path: Path) -> None:
    from monitor.bundle import load_bundle
    from monitor.errors import ConfigError

    root = _skab_like(tmp_path / "skab")
    result = evaluate(
        "skab",
        root,
        model=ModelOptions(window=16, epochs=2, ignore_sensors=("Temperature", "Thermocouple")),
        work_dir=tmp_path / "work",
    )
    features = load_bundle(result.bundles["valve1/0"]).manifest.features
    assert "Temperature" not in features
    assert "Thermocouple" not in features
    assert len(features) == len(SKAB_SENSORS) - 2
    with pytest.raises(ConfigError, match="no sensor column 'Temprature'"):
        evaluate(
            "skab", root, model=ModelOptions(window=16, epochs=2, ignore_sensors=("Temprature",))
        )


def test_skab_training_options_reach_the_bundles(tmp_path: Path) -> None:
    from monitor.bundle import load_bundle

    root = _skab_like(tmp_path / "skab")
    model = ModelOptions(
        window=16,
        epochs=2,
        threshold_rule="pot",
        pot_level=0.8,  # SKAB validates on 85 windows: 17 above the level
        pot_risk=1e-3,
        sensor_weighting="balanced",
        noise_std=0.1,
        mask_fraction=0.25,
        mask_unit="sensor",
        hyperparameters={"hidden": (32, 8)},
    )
    result = evaluate("skab", root, model=model, work_dir=tmp_path / "work")
    manifest = load_bundle(result.bundles["valve1/0"]).manifest
    assert manifest.threshold.rule == "pot"
    assert manifest.threshold.params["risk"] == 1e-3
    assert manifest.model.hyperparameters["sensor_weighting"] == "balanced"
    assert len(manifest.model.hyperparameters["sensor_weights"]) == len(SKAB_SENSORS)
    hyper = manifest.model.hyperparameters
    assert (hyper["noise_std"], hyper["mask_fraction"], hyper["mask_unit"]) == (0.1, 0.25, "sensor")
    assert hyper["hidden"] == [32, 8]
    assert result.options["model"]["threshold_rule"] == "pot"
    assert result.options["model"]["mask_unit"] == "sensor"
