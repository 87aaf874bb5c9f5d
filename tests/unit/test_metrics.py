from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.metrics import Metrics


def families(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def test_names_units_and_exposition_parse() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, process=False)
    m.readings.labels("ok").inc(3)
    m.scoring_latency.observe(0.002)
    m.set_model("pumps", "v1", "ab" * 32, "CPUExecutionProvider", threshold=0.5)
    fams = families(registry)
    assert ({"result": "ok"}, 3.0) in [(lb, v) for lb, v in fams["plantwatch_readings"]]
    assert "plantwatch_scoring_latency_seconds" in fams
    info = fams["plantwatch_model_info"]
    assert info == [
        (
            {
                "route": "default",
                "name": "pumps",
                "version": "v1",
                "sha256": "ab" * 32,
                "provider": "CPUExecutionProvider",
            },
            1.0,
        )
    ]
    for name in fams:
        assert name.startswith("plantwatch_")


def test_model_info_keeps_one_series_after_reload() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, process=False)
    m.set_model("pumps", "v1", "a" * 64, "CPUExecutionProvider", threshold=0.5)
    m.set_model("pumps", "v2", "b" * 64, "CPUExecutionProvider", threshold=0.6)
    series = families(registry)["plantwatch_model_info"]
    assert [labels["version"] for labels, _ in series] == ["v2"]
    assert families(registry)["plantwatch_anomaly_threshold"] == [({"route": "default"}, 0.6)]


def test_each_route_has_its_model_threshold_and_scores() -> None:
    """With routes (Settings.routes), per-model series carry the route: a reload of one route
    replaces only its own model series, and scores divide by their own route's threshold."""
    registry = CollectorRegistry()
    m = Metrics(registry, max_asset_labels=3, process=False)
    m.set_model("pumps", "v1", "a" * 64, "CPUExecutionProvider", threshold=0.5)
    m.set_model("compressors", "v1", "c" * 64, "CPUExecutionProvider", threshold=2.0, route="c")
    m.set_model("pumps", "v2", "b" * 64, "CPUExecutionProvider", threshold=0.6)
    fams = families(registry)
    info = sorted(
        (lb["route"], lb["name"], lb["version"]) for lb, _ in fams["plantwatch_model_info"]
    )
    assert info == [("c", "compressors", "v1"), ("default", "pumps", "v2")]
    thresholds = {lb["route"]: v for lb, v in fams["plantwatch_anomaly_threshold"]}
    assert thresholds == {"default": 0.6, "c": 2.0}
    m.set_asset_scores({"pump-1": 0.3, "pump-2": 0.4})
    m.set_asset_scores({"comp-1": 1.0, "comp-2": 3.0}, "c")  # the cap (3) counts every route
    fams = families(registry)
    by_asset = {lb["asset"]: (lb["route"], v) for lb, v in fams["plantwatch_anomaly_score"]}
    assert by_asset == {
        "pump-1": ("default", 0.3),
        "pump-2": ("default", 0.4),
        "comp-1": ("c", 1.0),
    }
    assert fams["plantwatch_asset_labels_dropped"] == [({}, 1.0)]
    m.forget_assets(["comp-1"])
    assert "comp-1" not in scores(registry)


def test_asset_labels_are_capped() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, max_asset_labels=2, process=False)
    for i in range(5):
        m.set_asset_score(f"a{i}", float(i))
        m.set_asset_score(f"a{i}", float(i) + 0.5)  # a second update must not add a label
    fams = families(registry)
    assert sorted(lb["asset"] for lb, _ in fams["plantwatch_anomaly_score"]) == ["a0", "a1"]
    assert fams["plantwatch_asset_labels_dropped"] == [({}, 3.0)]
    m.forget_assets(["a0", "a3"])
    fams = families(registry)
    assert [lb["asset"] for lb, _ in fams["plantwatch_anomaly_score"]] == ["a1"]
    assert fams["plantwatch_asset_labels_dropped"] == [({}, 2.0)]


def test_process_collectors_register_on_the_injected_registry() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    assert "process_resident_memory_bytes" in generate_latest(registry).decode()


def scores(registry: CollectorRegistry) -> dict[str, float]:
    return {lb["asset"]: v for lb, v in families(registry)["plantwatch_anomaly_score"]}


def test_asset_scores_keep_the_latest_value_per_asset() -> None:
    registry = CollectorRegistry()
    m = Metrics(registry, max_asset_labels=3, process=False)
    assets = ["a", "b", "a", "c", "d"]
    m.set_asset_scores(dict(zip(assets, [1.0, 2.0, 3.0, 4.0, 5.0], strict=True)))
    assert scores(registry) == {"a": 3.0, "b": 2.0, "c": 4.0}
    # Every asset known: the batch is one dict update; "d" stays out (the cap).
    m.set_asset_scores({"c": 0.5, "a": 0.25})
    m.set_asset_scores({"d": 9.0})
    assert scores(registry) == {"a": 0.25, "b": 2.0, "c": 0.5}
    assert families(registry)["plantwatch_asset_labels_dropped"] == [({}, 1.0)]


def test_a_scrape_while_scores_change_sees_a_consistent_snapshot() -> None:
    # Scrapes run in the HTTP server's thread while the loop updates the scores.
    registry = CollectorRegistry()
    m = Metrics(registry, max_asset_labels=10_000, process=False)
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            m.set_asset_scores({f"a{i % 2000}": float(i), f"b{i % 7}": 1.0})
            if i % 100 == 0:
                m.forget_assets([f"a{(i // 100) % 2000}"])
            i += 1

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for _ in range(20):
            families(registry)  # would raise "dictionary changed size during iteration"
    finally:
        stop.set()
        thread.join()
