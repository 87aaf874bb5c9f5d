from __future__ import annotations

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
    m.set_model("pumps", "v1", "ab" * 32, "CPUExecutionProvider")
    fams = families(registry)
    assert ({"result": "ok"}, 3.0) in [(lb, v) for lb, v in fams["plantwatch_readings"]]
    assert "plantwatch_scoring_latency_seconds" in fams
    info = fams["plantwatch_model_info"]
    assert info == [
        (
            {
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
    m.set_model("pumps", "v1", "a" * 64, "CPUExecutionProvider")
    m.set_model("pumps", "v2", "b" * 64, "CPUExecutionProvider")
    series = families(registry)["plantwatch_model_info"]
    assert [labels["version"] for labels, _ in series] == ["v2"]


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
